//! Generated code for whatsd's own protobuf records (`proto/whatsd/v1`).

/// `package whatsd.v1`.
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/whatsd.v1.rs"));
}
