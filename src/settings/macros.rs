//! The declaration macros: [`crate::section!`] and [`crate::setting_enum!`].

/// Declares a settings section; see the module docs.
#[macro_export]
macro_rules! section {
    (
        $(#[doc = $sdoc:literal])*
        pub struct $name:ident {
            $(
                $(#[doc = $doc:literal])*
                pub $field:ident : $ty:ty = $default:expr $(, range($min:expr, $max:expr))? ;
            )*
        }
        $(check = $check:path;)?
    ) => {
        $(#[doc = $sdoc])*
        #[derive(Debug, Clone, ::serde::Deserialize)]
        #[serde(default, deny_unknown_fields)]
        pub struct $name {
            $(
                $(#[doc = $doc])*
                #[serde(deserialize_with = "crate::settings::de")]
                pub $field: $ty,
            )*
        }

        impl Default for $name {
            fn default() -> Self {
                Self { $($field: $default,)* }
            }
        }

        impl $crate::settings::Setting for $name {
            fn deserialize<'de, D: ::serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                <Self as ::serde::Deserialize>::deserialize(d)
            }

            fn schema() -> ::serde_json::Value {
                let defaults = Self::default();
                let mut properties = ::serde_json::Map::new();
                $(
                    let mut schema = <$ty as $crate::settings::Setting>::schema();
                    $crate::settings::describe(
                        &mut schema,
                        &[$($doc),*],
                        $crate::settings::Setting::show(&defaults.$field),
                    );
                    $( $crate::settings::describe_bound(&mut schema, &defaults.$field, $min, $max); )?
                    properties.insert(stringify!($field).to_owned(), schema);
                )*
                $crate::settings::object(properties, &[$($sdoc),*])
            }

            fn show(&self) -> String {
                String::new()
            }

            fn effective(&self) -> ::serde_json::Value {
                let mut fields = ::serde_json::Map::new();
                $(
                    fields.insert(
                        stringify!($field).to_owned(),
                        $crate::settings::Setting::effective(&self.$field),
                    );
                )*
                ::serde_json::Value::Object(fields)
            }

            fn check(&self, path: &str, problems: &mut $crate::settings::Problems) {
                $(
                    let key = $crate::settings::join(path, stringify!($field));
                    $( $crate::settings::check_range(&self.$field, $min, $max, &key, problems); )?
                    $crate::settings::Setting::check(&self.$field, &key, problems);
                )*
                $( $check(self, path, problems); )?
            }
        }
    };
}

/// Declares an enum setting written as one of a few words.
#[macro_export]
macro_rules! setting_enum {
    (
        $(#[doc = $doc:literal])*
        pub enum $name:ident {
            $( $(#[doc = $vdoc:literal])* $variant:ident = $word:literal, )+
        }
        default = $default:ident;
    ) => {
        $(#[doc = $doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[doc = $vdoc])* $variant, )+
        }

        impl Default for $name {
            fn default() -> Self {
                Self::$default
            }
        }

        impl $name {
            pub const WORDS: &'static [&'static str] = &[$($word),+];

            pub fn as_str(self) -> &'static str {
                match self { $( Self::$variant => $word, )+ }
            }

            pub fn parse(word: &str) -> Option<Self> {
                match word { $( $word => Some(Self::$variant), )+ _ => None }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl<'de> ::serde::Deserialize<'de> for $name {
            fn deserialize<D: ::serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let word = <String as ::serde::Deserialize>::deserialize(d)?;
                Self::parse(&word).ok_or_else(|| {
                    ::serde::de::Error::custom(format!(
                        "`{word}` is not one of: {}",
                        Self::WORDS.join(", ")
                    ))
                })
            }
        }

        impl $crate::settings::Setting for $name {
            fn deserialize<'de, D: ::serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                <Self as ::serde::Deserialize>::deserialize(d)
            }
            fn schema() -> ::serde_json::Value {
                ::serde_json::json!({ "type": "string", "enum": Self::WORDS })
            }
            fn show(&self) -> String {
                format!("`{}`", self.as_str())
            }
        }
    };
}
