//! What bytes are, from their first bytes (magic numbers): a media send's
//! declared type is checked against this, never against what the caller
//! says the bytes are.

use crate::session::outbound::MediaKind;

/// Bytes [`sniff`] needs to tell every type it knows.
pub const SNIFF_LEN: usize = 64;

/// The MIME type of `head` (the first [`SNIFF_LEN`] bytes or all of a
/// shorter file), if it is one this knows.
pub fn sniff(head: &[u8]) -> Option<&'static str> {
    let at = |offset: usize, magic: &[u8]| head.get(offset..offset + magic.len()) == Some(magic);
    if at(0, b"\xFF\xD8\xFF") {
        return Some("image/jpeg");
    }
    if at(0, b"\x89PNG\r\n\x1a\n") {
        return Some("image/png");
    }
    if at(0, b"GIF87a") || at(0, b"GIF89a") {
        return Some("image/gif");
    }
    if at(0, b"RIFF") && at(8, b"WEBP") {
        return Some("image/webp");
    }
    if at(0, b"RIFF") && at(8, b"WAVE") {
        return Some("audio/wav");
    }
    if at(4, b"ftyp") {
        let brand = head.get(8..12).unwrap_or_default();
        return Some(match brand {
            b"M4A " | b"M4B " => "audio/mp4",
            b"qt  " => "video/quicktime",
            b if b.starts_with(b"3g") => "video/3gpp",
            _ => "video/mp4",
        });
    }
    if at(0, b"\x1A\x45\xDF\xA3") {
        return Some("video/webm");
    }
    if at(0, b"OggS") {
        let opus = head.windows(8).any(|w| w == b"OpusHead");
        return Some(if opus {
            "audio/ogg; codecs=opus"
        } else {
            "audio/ogg"
        });
    }
    if at(0, b"#!AMR") {
        return Some("audio/amr");
    }
    if at(0, b"ID3") {
        return Some("audio/mpeg");
    }
    if let [0xFF, second, ..] = head {
        // ADTS AAC has layer bits 00; MPEG audio layers are 01-11.
        if second & 0xF6 == 0xF0 {
            return Some("audio/aac");
        }
        if second & 0xE0 == 0xE0 && second & 0x06 != 0 {
            return Some("audio/mpeg");
        }
    }
    if at(0, b"%PDF-") {
        return Some("application/pdf");
    }
    if at(0, b"PK\x03\x04") {
        return Some("application/zip");
    }
    None
}

/// Whether bytes of type `sniffed` may be sent as `kind` (`voice`: a
/// push-to-talk note, Opus in Ogg as WhatsApp records them). Documents
/// take anything.
pub fn fits(kind: MediaKind, voice: bool, sniffed: Option<&str>) -> bool {
    let mime = sniffed.unwrap_or_default();
    match kind {
        MediaKind::Document => true,
        MediaKind::Image => matches!(mime, "image/jpeg" | "image/png"),
        MediaKind::Sticker => mime == "image/webp",
        MediaKind::Video => matches!(mime, "video/mp4" | "video/3gpp"),
        MediaKind::Audio if voice => mime == "audio/ogg; codecs=opus",
        MediaKind::Audio => matches!(
            mime,
            "audio/ogg; codecs=opus"
                | "audio/ogg"
                | "audio/mpeg"
                | "audio/mp4"
                | "audio/aac"
                | "audio/amr"
        ),
    }
}

/// What `kind` takes, for the 415 answer.
pub fn accepted(kind: MediaKind, voice: bool) -> &'static str {
    match kind {
        MediaKind::Document => "any file",
        MediaKind::Image => "JPEG or PNG",
        MediaKind::Sticker => "WebP",
        MediaKind::Video => "MP4 or 3GPP",
        MediaKind::Audio if voice => "Opus in Ogg (a voice note)",
        MediaKind::Audio => "Ogg, MP3, M4A, AAC or AMR",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magic_numbers() {
        let cases: &[(&[u8], Option<&str>)] = &[
            (b"\xFF\xD8\xFF\xE0\x00\x10JFIF", Some("image/jpeg")),
            (b"\x89PNG\r\n\x1a\n\x00\x00", Some("image/png")),
            (b"GIF89a....", Some("image/gif")),
            (b"RIFF\x10\x00\x00\x00WEBPVP8 ", Some("image/webp")),
            (b"RIFF\x10\x00\x00\x00WAVEfmt ", Some("audio/wav")),
            (b"\x00\x00\x00\x20ftypisom\x00\x00", Some("video/mp4")),
            (b"\x00\x00\x00\x20ftypmp42\x00\x00", Some("video/mp4")),
            (b"\x00\x00\x00\x20ftypM4A \x00\x00", Some("audio/mp4")),
            (b"\x00\x00\x00\x14ftyp3gp5\x00\x00", Some("video/3gpp")),
            (b"\x1A\x45\xDF\xA3\x01", Some("video/webm")),
            (b"OggS\x00\x02\x00\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01\x13OpusHead", Some("audio/ogg; codecs=opus")),
            (b"OggS\x00\x02\x00\x00\x01vorbis", Some("audio/ogg")),
            (b"#!AMR\n", Some("audio/amr")),
            (b"ID3\x04\x00", Some("audio/mpeg")),
            (b"\xFF\xFB\x90\x00", Some("audio/mpeg")),
            (b"\xFF\xF1\x50\x80", Some("audio/aac")),
            (b"%PDF-1.7\n", Some("application/pdf")),
            (b"PK\x03\x04\x14\x00", Some("application/zip")),
            (b"hello, world", None),
            (b"", None),
            (b"\xFF", None),
            (b"RIFF", None),
        ];
        for (head, want) in cases {
            assert_eq!(sniff(head), *want, "{head:?}");
        }
    }

    #[test]
    fn declared_types_must_fit_the_bytes() {
        let png = sniff(b"\x89PNG\r\n\x1a\n");
        let opus = sniff(b"OggS\x00\x02\x00\x00OpusHead");
        let mp3 = sniff(b"ID3\x04");
        assert!(fits(MediaKind::Image, false, png));
        assert!(!fits(MediaKind::Audio, false, png), "a PNG is no audio");
        assert!(!fits(MediaKind::Sticker, false, png), "stickers are WebP");
        assert!(fits(MediaKind::Document, false, png));
        assert!(fits(MediaKind::Document, false, None));
        assert!(!fits(MediaKind::Image, false, None));
        assert!(fits(MediaKind::Audio, true, opus));
        assert!(fits(MediaKind::Audio, false, mp3));
        assert!(!fits(MediaKind::Audio, true, mp3), "voice notes are Opus");
    }
}
