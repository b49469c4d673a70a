//! Code styles: how an API spells its error codes.

crate::names::named_enum! {
    /// How an API spells its codes. Lint checks every code against the declared style.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub enum CodeStyle ("code style") {
        /// `not_found`, `rate_limited`.
        SnakeCase => "snake_case",
        /// Dotted namespaces of snake_case segments, at least two: `api_key.revoked`.
        Dotted => "dotted",
        /// `NOT_FOUND`, `RATE_LIMITED`.
        UpperSnake => "upper_snake",
    }
}

impl CodeStyle {
    /// An example code in this style, for error messages.
    pub const fn example(self) -> &'static str {
        match self {
            CodeStyle::SnakeCase => "not_found",
            CodeStyle::Dotted => "api_key.revoked",
            CodeStyle::UpperSnake => "NOT_FOUND",
        }
    }

    /// Whether `code` is spelt in this style.
    ///
    /// ```
    /// use faultline::CodeStyle;
    /// assert!(CodeStyle::Dotted.matches("api_key.revoked"));
    /// assert!(!CodeStyle::Dotted.matches("revoked"));
    /// assert!(CodeStyle::UpperSnake.matches("RATE_LIMITED"));
    /// assert!(!CodeStyle::SnakeCase.matches("rate__limited"));
    /// ```
    pub fn matches(self, code: &str) -> bool {
        match self {
            CodeStyle::SnakeCase => is_snake_segment(code, false),
            CodeStyle::UpperSnake => is_snake_segment(code, true),
            CodeStyle::Dotted => {
                let mut segments = 0;
                for segment in code.split('.') {
                    if !is_snake_segment(segment, false) {
                        return false;
                    }
                    segments += 1;
                }
                segments >= 2
            }
        }
    }
}

/// `[a-z][a-z0-9]*(_[a-z0-9]+)*`, or the upper-case variant.
fn is_snake_segment(s: &str, upper: bool) -> bool {
    let letter = |c: u8| {
        if upper {
            c.is_ascii_uppercase()
        } else {
            c.is_ascii_lowercase()
        }
    };
    let bytes = s.as_bytes();
    let Some(&first) = bytes.first() else {
        return false;
    };
    if !letter(first) || bytes.last() == Some(&b'_') {
        return false;
    }
    let mut previous_underscore = false;
    for &c in bytes {
        if c == b'_' {
            if previous_underscore {
                return false;
            }
            previous_underscore = true;
        } else if letter(c) || c.is_ascii_digit() {
            previous_underscore = false;
        } else {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snake_case() {
        for ok in ["not_found", "a", "invalid_api_key", "e2e_failed"] {
            assert!(CodeStyle::SnakeCase.matches(ok), "{ok}");
        }
        for bad in [
            "",
            "_x",
            "x_",
            "a__b",
            "NotFound",
            "not-found",
            "1abc",
            "api_key.revoked",
        ] {
            assert!(!CodeStyle::SnakeCase.matches(bad), "{bad}");
        }
    }

    #[test]
    fn dotted() {
        assert!(CodeStyle::Dotted.matches("common.not_found"));
        assert!(CodeStyle::Dotted.matches("a.b.c"));
        for bad in ["not_found", "a..b", ".a", "a.", "A.b", "a.B"] {
            assert!(!CodeStyle::Dotted.matches(bad), "{bad}");
        }
    }

    #[test]
    fn names_parse() {
        for style in CodeStyle::ALL {
            assert_eq!(style.as_str().parse(), Ok(style));
        }
        assert!("kebab-case".parse::<CodeStyle>().is_err());
    }

    #[test]
    fn upper_snake() {
        assert!(CodeStyle::UpperSnake.matches("INVALID_PARAM"));
        assert!(!CodeStyle::UpperSnake.matches("Invalid_Param"));
        assert!(!CodeStyle::UpperSnake.matches("invalid_param"));
    }
}
