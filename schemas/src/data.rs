//! What an event's `data` may hold beyond being JSON: a bounded nesting depth, and strings
//! that every strict parser reads.
//!
//! `data` travels verbatim from the publisher to every member and every replay, so a value
//! that one client's parser cannot read (deeply nested arrays that overflow a recursive
//! parser's stack, or a `"\ud800"` escape that decodes to no Unicode character) would reach
//! every member of the room, again on every join. Gateways refuse such a publish with
//! `invalid_frame`; workers dead-letter such an envelope from another producer.
//!
//! Rules, checked by [`check_data`] in one pass over the text:
//! - Arrays and objects nest at most `max_depth` levels (`1` and `"x"` are depth 0, `[]` and
//!   `{}` depth 1, `[[1]]` depth 2). Gateways apply their `max_data_depth` setting (default
//!   [`DEFAULT_MAX_DATA_DEPTH`], at most [`MAX_DATA_DEPTH`]); workers apply [`MAX_DATA_DEPTH`],
//!   so that no event a gateway acknowledged is dead-lettered.
//! - A `\u` escape of a UTF-16 surrogate must be a pair: a high surrogate (`\ud800`–`\udbff`)
//!   immediately followed by a low one (`\udc00`–`\udfff`).

use thiserror::Error;

/// Default nesting limit of a gateway's `max_data_depth`.
pub const DEFAULT_MAX_DATA_DEPTH: usize = 64;
/// Largest nesting a gateway may be configured to accept, and the limit workers apply. A
/// message frame wraps `data` in one more level, and common parsers stop near 128.
pub const MAX_DATA_DEPTH: usize = 100;

/// Why `data` was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DataError {
    /// Arrays and objects nest deeper than the limit.
    #[error("`data` nests arrays and objects deeper than {max} levels")]
    TooDeep {
        /// The limit that applied.
        max: usize,
    },
    /// A string holds a `\u` escape of an unpaired UTF-16 surrogate.
    #[error("`data` holds a string with an unpaired surrogate escape (\\ud800-\\udfff)")]
    LoneSurrogate,
}

/// Checks the JSON text `json` (already known to be valid JSON) against the module's rules.
pub fn check_data(json: &str, max_depth: usize) -> Result<(), DataError> {
    let bytes = json.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'[' | b'{' => {
                depth += 1;
                if depth > max_depth {
                    return Err(DataError::TooDeep { max: max_depth });
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            b'"' => i = string_end(bytes, i + 1)?,
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

/// Scans a string whose text starts at `i` (after its opening quote); returns the index of the
/// closing quote.
fn string_end(bytes: &[u8], mut i: usize) -> Result<usize, DataError> {
    while i < bytes.len() {
        match bytes[i] {
            b'"' => return Ok(i),
            b'\\' if bytes.get(i + 1) == Some(&b'u') => {
                let unit = hex4(bytes, i + 2);
                i += 6;
                match unit {
                    Some(0xD800..=0xDBFF) => {
                        let low = (bytes.get(i) == Some(&b'\\') && bytes.get(i + 1) == Some(&b'u'))
                            .then(|| hex4(bytes, i + 2))
                            .flatten();
                        if !matches!(low, Some(0xDC00..=0xDFFF)) {
                            return Err(DataError::LoneSurrogate);
                        }
                        i += 6;
                    }
                    Some(0xDC00..=0xDFFF) => return Err(DataError::LoneSurrogate),
                    _ => {}
                }
            }
            // Any other escape is two bytes; `\"` must not end the string.
            b'\\' => i += 2,
            _ => i += 1,
        }
    }
    Ok(i)
}

/// The four hex digits at `at`, as a UTF-16 code unit.
fn hex4(bytes: &[u8], at: usize) -> Option<u16> {
    let digits = bytes.get(at..at + 4)?;
    u16::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(depth: usize) -> String {
        format!("{}{}", "[".repeat(depth), "]".repeat(depth))
    }

    #[test]
    fn nesting_is_bounded() {
        for ok in ["1", "\"x\"", "null", "[]", "{}", "{\"a\":[1,{\"b\":2}]}"] {
            assert_eq!(check_data(ok, 3), Ok(()), "{ok}");
        }
        assert_eq!(check_data(&nested(64), 64), Ok(()));
        assert_eq!(
            check_data(&nested(65), 64),
            Err(DataError::TooDeep { max: 64 })
        );
        assert_eq!(
            check_data(&nested(10_000), MAX_DATA_DEPTH),
            Err(DataError::TooDeep { max: 100 })
        );
        let objects = format!("{}1{}", "{\"a\":".repeat(5), "}".repeat(5));
        assert_eq!(check_data(&objects, 5), Ok(()));
        assert!(check_data(&objects, 4).is_err());
        // Siblings do not add up: depth is how deep, not how many.
        let wide = format!("[{}]", vec!["[[1]]"; 1000].join(","));
        assert_eq!(check_data(&wide, 3), Ok(()));
    }

    #[test]
    fn brackets_and_escapes_inside_strings_are_text() {
        assert_eq!(check_data(r#"["[[[[", "\"[[[", "\\"]"#, 1), Ok(()));
        assert_eq!(check_data(r#"{"k]]]":"}}}"}"#, 1), Ok(()));
    }

    #[test]
    fn unpaired_surrogates_are_refused_and_pairs_kept() {
        for ok in [
            r#""\ud83d\ude00""#,
            r#""\uD83D\uDE00""#,
            r#""\u00e9\u20ac""#,
            r#""\\ud800""#,
            r#""é😀""#,
        ] {
            assert_eq!(check_data(ok, 1), Ok(()), "{ok}");
        }
        for bad in [
            r#""\ud800""#,
            r#""\udfff""#,
            r#""\ud800x""#,
            r#""\ud800\u0041""#,
            r#""\ude00\ud83d""#,
            r#"{"a":["ok","\udbff"]}"#,
            r#"{"\ud800":1}"#,
        ] {
            assert_eq!(check_data(bad, 4), Err(DataError::LoneSurrogate), "{bad}");
        }
    }

    #[test]
    fn the_largest_depth_still_parses_inside_a_message_frame() {
        let data = nested(MAX_DATA_DEPTH);
        let frame = format!(r#"{{"type":"message","data":{data}}}"#);
        serde_json::from_str::<serde_json::Value>(&frame).expect("within serde_json's limit");
    }
}
