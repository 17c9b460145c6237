#!/usr/bin/env bash
# The user guide's screenshots exist and are plausible (called by .ci/run).
# Fails when an image docs/USER_GUIDE.md references is missing, is not a
# PNG (magic bytes), or is smaller than 5 KB or larger than 500 KB, and when
# a PNG in docs/images is referenced by nothing. Regenerate them with
# scripts/guide-screenshots.sh. Content is not compared: the browser test
# that takes them already asserts what they show.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
guide="$root/docs/USER_GUIDE.md"
images="$root/docs/images"
min=$((5 * 1024))
max=$((500 * 1024))
png_magic='89504e470d0a1a0a'
failed=0
fail() {
  echo "check-guide-images: $*" >&2
  failed=1
}

[[ -f $guide ]] || { echo "check-guide-images: no $guide" >&2; exit 1; }

# Markdown images ![alt](path "title") and HTML <img src="path">, relative
# to docs/.
mapfile -t refs < <(
  grep -oE '!\[[^]]*\]\([^) ]+|<img[^>]*src="[^"]+"' "$guide" |
    sed -E 's/^!\[[^]]*\]\(//; s/^<img[^>]*src="//; s/"$//' | sort -u
)
((${#refs[@]} > 0)) || fail "docs/USER_GUIDE.md references no image"

declare -A referenced=()
for ref in "${refs[@]}"; do
  path="$root/docs/$ref"
  referenced["$(realpath -m "$path")"]=1
  if [[ ! -f $path ]]; then
    fail "$ref: missing"
    continue
  fi
  magic=$(head -c 8 "$path" | od -An -tx1 | tr -d ' \n')
  [[ $magic == "$png_magic" ]] || fail "$ref: not a PNG"
  size=$(stat -c %s "$path")
  ((size >= min)) || fail "$ref: $size bytes, under 5 KB"
  ((size <= max)) || fail "$ref: $size bytes, over 500 KB"
done

if [[ -d $images ]]; then
  while IFS= read -r -d '' png; do
    [[ -n ${referenced["$(realpath -m "$png")"]:-} ]] ||
      fail "docs/images/$(basename "$png"): not referenced by docs/USER_GUIDE.md"
  done < <(find "$images" -type f -iname '*.png' -print0)
fi

((failed == 0)) || exit 1
echo "check-guide-images: ${#refs[@]} images OK"
