//! The id of a lot, earn, spend or hold inside an account: a caller's request
//! id, kept without a heap allocation when it is short or a UUID.
//!
//! An account keys its lots, earns, spends and holds by the request ids that
//! made them, and names the lots a spend or a hold drew on. As `String`s each
//! of those ids was a 24-byte handle and a heap block of its own (a 36-byte
//! UUID takes a 48-byte block), and the same id was kept up to three times
//! (the lot, the earn, the spends that drew on it). An [`Id`] is 24 bytes with
//! no block: a canonical (lowercase, hyphenated) UUID as its 16 bytes, any
//! other id of up to [`INLINE_MAX`] bytes inline, and only a longer one on the
//! heap.
//!
//! A string has exactly one `Id` (a UUID in another spelling is not
//! canonical and is kept as text), so ids compare equal exactly when their
//! strings do, and they order as their strings do: a canonical UUID's text
//! orders as its bytes (its hex digits order as their values, its hyphens
//! sit at the same places).

use std::cmp::Ordering;
use std::fmt;

/// Bytes of an id kept inline.
pub const INLINE_MAX: usize = 22;

/// Characters of a UUID's canonical text.
const UUID_LEN: usize = 36;
/// Where a canonical UUID has its hyphens.
const HYPHENS: [usize; 4] = [8, 13, 18, 23];

#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Id(Repr);

#[derive(Clone, PartialEq, Eq, Hash)]
enum Repr {
    Uuid([u8; 16]),
    Inline { len: u8, bytes: [u8; INLINE_MAX] },
    Heap(Box<str>),
}

const _: () = assert!(std::mem::size_of::<Id>() == 24);

impl Id {
    #[inline]
    pub fn of(s: &str) -> Id {
        if let Some(uuid) = parse_uuid(s.as_bytes()) {
            return Id(Repr::Uuid(uuid));
        }
        if s.len() <= INLINE_MAX {
            let mut bytes = [0; INLINE_MAX];
            bytes[..s.len()].copy_from_slice(s.as_bytes());
            return Id(Repr::Inline { len: s.len() as u8, bytes });
        }
        Id(Repr::Heap(s.into()))
    }

    /// The id of a UUID's 16 bytes (as [`Id::uuid`] gives them), or `None`
    /// when `bytes` are not 16.
    pub fn from_uuid(bytes: &[u8]) -> Option<Id> {
        bytes.try_into().ok().map(|uuid| Id(Repr::Uuid(uuid)))
    }

    /// Its 16 bytes when it is a canonical UUID.
    #[inline]
    pub fn uuid(&self) -> Option<&[u8; 16]> {
        match &self.0 {
            Repr::Uuid(uuid) => Some(uuid),
            _ => None,
        }
    }

    /// Its text's length in bytes.
    #[inline]
    pub fn len(&self) -> usize {
        match &self.0 {
            Repr::Uuid(_) => UUID_LEN,
            Repr::Inline { len, .. } => usize::from(*len),
            Repr::Heap(s) => s.len(),
        }
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Calls `f` with its text (written out on the stack for a UUID).
    #[inline]
    pub fn with_str<R>(&self, f: impl FnOnce(&str) -> R) -> R {
        match &self.0 {
            Repr::Uuid(uuid) => {
                let mut text = [0; UUID_LEN];
                f(format_uuid(uuid, &mut text))
            }
            Repr::Inline { len, bytes } => f(inline_str(bytes, *len)),
            Repr::Heap(s) => f(s),
        }
    }

    /// Whether its text is `s`.
    #[inline]
    pub fn is(&self, s: &str) -> bool {
        match &self.0 {
            Repr::Inline { len, bytes } => inline_str(bytes, *len) == s,
            Repr::Heap(h) => &**h == s,
            Repr::Uuid(uuid) => parse_uuid(s.as_bytes()).as_ref() == Some(uuid),
        }
    }
}

#[inline]
fn inline_str(bytes: &[u8; INLINE_MAX], len: u8) -> &str {
    std::str::from_utf8(&bytes[..usize::from(len)]).expect("made from a str")
}

/// The 16 bytes of a UUID in canonical text (lowercase hex, hyphenated).
#[inline]
fn parse_uuid(text: &[u8]) -> Option<[u8; 16]> {
    if text.len() != UUID_LEN || HYPHENS.iter().any(|&i| text[i] != b'-') {
        return None;
    }
    let mut digits = text.iter().enumerate().filter(|(i, _)| !HYPHENS.contains(i)).map(|(_, &c)| c);
    let mut out = [0u8; 16];
    for byte in &mut out {
        let (hi, lo) = (nibble(digits.next()?)?, nibble(digits.next()?)?);
        *byte = hi << 4 | lo;
    }
    Some(out)
}

#[inline]
fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

fn format_uuid<'a>(uuid: &[u8; 16], text: &'a mut [u8; UUID_LEN]) -> &'a str {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut at = 0;
    for (i, byte) in uuid.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            text[at] = b'-';
            at += 1;
        }
        text[at] = HEX[usize::from(byte >> 4)];
        text[at + 1] = HEX[usize::from(byte & 0xf)];
        at += 2;
    }
    std::str::from_utf8(text).expect("hex digits and hyphens")
}

impl Ord for Id {
    #[inline]
    fn cmp(&self, other: &Id) -> Ordering {
        match (&self.0, &other.0) {
            (Repr::Uuid(a), Repr::Uuid(b)) => a.cmp(b),
            (Repr::Inline { len: a, bytes: x }, Repr::Inline { len: b, bytes: y }) => {
                x[..usize::from(*a)].cmp(&y[..usize::from(*b)])
            }
            _ => self.with_str(|a| other.with_str(|b| a.cmp(b))),
        }
    }
}

impl PartialOrd for Id {
    #[inline]
    fn partial_cmp(&self, other: &Id) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.with_str(|s| f.write_str(s))
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.with_str(|s| fmt::Debug::fmt(s, f))
    }
}

impl From<&str> for Id {
    fn from(s: &str) -> Id {
        Id::of(s)
    }
}

impl From<&String> for Id {
    fn from(s: &String) -> Id {
        Id::of(s)
    }
}

impl PartialEq<str> for Id {
    fn eq(&self, other: &str) -> bool {
        self.is(other)
    }
}

impl PartialEq<&str> for Id {
    fn eq(&self, other: &&str) -> bool {
        self.is(other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UUID: &str = "0f1e2d3c-4b5a-4978-8a6b-5c4d3e2f1a0b";

    #[test]
    fn a_canonical_uuid_is_kept_as_its_bytes_and_reads_back_the_same() {
        let id = Id::of(UUID);
        assert!(matches!(id.0, Repr::Uuid(_)));
        assert_eq!(id.to_string(), UUID);
        assert_eq!(id.len(), UUID.len());
        assert!(id.is(UUID));
    }

    #[test]
    fn a_uuid_is_made_again_from_its_bytes_and_only_from_sixteen() {
        let id = Id::of(UUID);
        assert_eq!(Id::from_uuid(id.uuid().unwrap()), Some(id));
        assert_eq!(Id::from_uuid(&[1; 15]), None);
        assert_eq!(Id::of("e1").uuid(), None);
    }

    #[test]
    fn a_uuid_in_capitals_or_without_hyphens_is_kept_as_text() {
        for s in [UUID.to_uppercase(), UUID.replace('-', ""), format!("{}-", &UUID[..35])] {
            let id = Id::of(&s);
            assert!(!matches!(id.0, Repr::Uuid(_)), "{s}");
            assert_eq!(id.to_string(), s);
        }
    }

    #[test]
    fn short_ids_are_inline_and_long_ones_on_the_heap() {
        let short = "e".repeat(INLINE_MAX);
        assert!(matches!(Id::of(&short).0, Repr::Inline { .. }));
        let long = "e".repeat(INLINE_MAX + 1);
        assert!(matches!(Id::of(&long).0, Repr::Heap(_)));
        assert_eq!(Id::of(&long).to_string(), long);
        assert_eq!(Id::of("").len(), 0);
    }

    #[test]
    fn ids_order_as_their_text_whatever_they_are_kept_as() {
        let mut texts = vec![
            UUID.to_string(),
            "0f1e2d3c-4b5a-4978-8a6b-5c4d3e2f1a0c".into(),
            "0f1e2d3c-4b5a-4978-8a6b-5c4d3e2f1a0b-and-more".into(),
            "0f1e2d3c".into(),
            "0f1e2d3c-4b5a-4978-8a6b-5c4d3e2f1a0A".into(),
            "ffffffff-ffff-ffff-ffff-ffffffffffff".into(),
            "a".into(),
            "".into(),
            "Z".repeat(40),
            "é-lot".into(),
        ];
        let mut ids: Vec<Id> = texts.iter().map(|s| Id::of(s)).collect();
        texts.sort();
        ids.sort();
        assert_eq!(ids.iter().map(Id::to_string).collect::<Vec<_>>(), texts);
        for (a, b) in texts.iter().zip(&ids) {
            assert!(b.is(a) && *b == Id::of(a));
        }
    }
}
