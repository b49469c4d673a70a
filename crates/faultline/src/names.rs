//! Names: the enums that catalogs and command lines spell as words, and the error for a word
//! that names none of their variants.

/// A name that matches no variant of an enum spelt as words (profiles, code styles, retry
/// advice, details shapes, situations). Its message lists the valid names.
///
/// ```
/// use faultline::Profile;
/// let error = "xml".parse::<Profile>().unwrap_err();
/// assert_eq!(error.given(), "xml");
/// assert_eq!(error.to_string(), "unknown profile `xml`; expected one of flat, code, nested, problem, google");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} `{given}`; expected one of {}", .valid.join(", "))]
pub struct UnknownName {
    what: &'static str,
    given: String,
    valid: Vec<&'static str>,
}

impl UnknownName {
    /// An error for `given`, which is not one of `valid` names of a `what` (e.g. "profile").
    pub fn new(
        what: &'static str,
        given: &str,
        valid: impl IntoIterator<Item = &'static str>,
    ) -> Self {
        UnknownName {
            what,
            given: given.to_owned(),
            valid: valid.into_iter().collect(),
        }
    }

    /// The word that was given.
    pub fn given(&self) -> &str {
        &self.given
    }

    /// Every valid name, in the enum's order.
    pub fn valid(&self) -> &[&'static str] {
        &self.valid
    }

    /// What kind of name was expected, e.g. `profile`.
    pub fn what(&self) -> &'static str {
        self.what
    }
}

/// Declares a field-less enum whose variants are spelt as words, writing each name once:
/// the enum with `ALL`, `as_str`, `FromStr` (error [`UnknownName`]) and `Display`.
macro_rules! named_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident ($what:literal) {
            $($(#[$doc:meta])* $variant:ident => $word:literal,)*
        }
    ) => {
        $(#[$meta])*
        #[non_exhaustive]
        pub enum $name {
            $($(#[$doc])* $variant,)*
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: [$name; [$($word),*].len()] = [$($name::$variant),*];

            /// The name used in catalog files and on the command line.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $word,)*
                }
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = $crate::names::UnknownName;

            fn from_str(name: &str) -> Result<Self, Self::Err> {
                Self::ALL
                    .into_iter()
                    .find(|v| v.as_str() == name)
                    .ok_or_else(|| {
                        $crate::names::UnknownName::new(
                            $what,
                            name,
                            Self::ALL.into_iter().map(Self::as_str),
                        )
                    })
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

pub(crate) use named_enum;
