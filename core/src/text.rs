//! Text that agents wrote (proposal messages, request paths, held-request previews, a fleet
//! node's problem), made safe to show on a terminal or a page. Owns only the rendering; where
//! such text is accepted and capped is decided by its callers.

/// Agent-written text made inert for display (row 50): control characters (but
/// newline), bidirectional overrides and isolates, and zero-width characters are shown as
/// `\u{...}` escapes, so text cannot reorder itself or hide characters on a terminal or a page.
pub fn inert(text: &str) -> String {
    text.chars()
        .map(|c| {
            let hidden = matches!(c,
                '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2064}'
                | '\u{2066}'..='\u{2069}' | '\u{feff}' | '\u{061c}');
            if (c.is_control() && c != '\n') || hidden {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Row 50 (H-06), row 67: hostile agent text is shown inert: controls, bidi overrides and
    /// zero-width characters escaped; newlines and ordinary text kept.
    #[test]
    fn row50_row67_control_bidi_and_zero_width_escaped() {
        assert_eq!(
            inert("ok\u{202e}txt.exe\u{1b}[31m"),
            "ok\\u{202e}txt.exe\\u{1b}[31m"
        );
        assert_eq!(inert("a\u{200b}b\u{2066}c"), "a\\u{200b}b\\u{2066}c");
        assert_eq!(inert("line\nnext, ünïcode"), "line\nnext, ünïcode");
    }
}
