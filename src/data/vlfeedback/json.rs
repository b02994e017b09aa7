//! One line's JSON read in a single pass into the fields a row uses, text borrowed from the
//! line where it has no escapes. Each part takes whatever JSON it is given: a field of the
//! wrong shape is read as such and named by `parse_row`'s message, not as a JSON error.
//! Maps read as serde_json's `Value` reads them here (its maps keep their order): a key
//! written twice sits where it first stood and holds its last value. Values no row uses are
//! still read whole, as `Value`s, so a line is invalid JSON exactly when it was before.

use std::borrow::Cow;
use std::marker::PhantomData;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

/// A value where the release has text: the text as written, or any other value as read.
pub(super) enum Field<'a> {
    Text(Cow<'a, str>),
    Other(Value),
}

impl Default for Field<'_> {
    fn default() -> Self {
        Field::Other(Value::Null)
    }
}

impl<'de> Deserialize<'de> for Field<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(FieldVisitor)
    }
}

struct FieldVisitor;

impl<'de> Visitor<'de> for FieldVisitor {
    type Value = Field<'de>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any value")
    }
    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Field<'de>, E> {
        Ok(Field::Text(Cow::Borrowed(s)))
    }
    fn visit_str<E>(self, s: &str) -> Result<Field<'de>, E> {
        Ok(Field::Text(Cow::Owned(s.to_owned())))
    }
    fn visit_string<E>(self, s: String) -> Result<Field<'de>, E> {
        Ok(Field::Text(Cow::Owned(s)))
    }
    fn visit_bool<E>(self, v: bool) -> Result<Field<'de>, E> {
        Ok(Field::Other(Value::Bool(v)))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Field<'de>, E> {
        Ok(Field::Other(Value::from(v)))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Field<'de>, E> {
        Ok(Field::Other(Value::from(v)))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Field<'de>, E> {
        Ok(Field::Other(Value::from(v)))
    }
    fn visit_unit<E>(self) -> Result<Field<'de>, E> {
        Ok(Field::default())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Field<'de>, A::Error> {
        Value::deserialize(serde::de::value::SeqAccessDeserializer::new(seq)).map(Field::Other)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Field<'de>, A::Error> {
        Value::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(Field::Other)
    }
}

/// A value of which one shape is of use (a map, a list); any other reads as `wrong()`.
trait Shape<'de>: Sized {
    fn wrong() -> Self;
    fn null() -> Self {
        Self::wrong()
    }
    fn map<A: MapAccess<'de>>(mut map: A) -> Result<Self, A::Error> {
        while map.next_entry::<String, Value>()?.is_some() {}
        Ok(Self::wrong())
    }
    fn seq<A: SeqAccess<'de>>(mut seq: A) -> Result<Self, A::Error> {
        while seq.next_element::<Value>()?.is_some() {}
        Ok(Self::wrong())
    }
}

struct Shaped<S>(PhantomData<S>);

impl<'de, S: Shape<'de>> Visitor<'de> for Shaped<S> {
    type Value = S;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<S, E> {
        Ok(S::wrong())
    }
    fn visit_i64<E>(self, _: i64) -> Result<S, E> {
        Ok(S::wrong())
    }
    fn visit_u64<E>(self, _: u64) -> Result<S, E> {
        Ok(S::wrong())
    }
    fn visit_f64<E>(self, _: f64) -> Result<S, E> {
        Ok(S::wrong())
    }
    fn visit_str<E>(self, _: &str) -> Result<S, E> {
        Ok(S::wrong())
    }
    fn visit_unit<E>(self) -> Result<S, E> {
        Ok(S::null())
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<S, A::Error> {
        S::map(map)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<S, A::Error> {
        S::seq(seq)
    }
}

macro_rules! deserialize_by_shape {
    ($($ty:ident),*) => {$(
        impl<'de> Deserialize<'de> for $ty<'de> {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_any(Shaped::<Self>(PhantomData))
            }
        }
    )*};
}
deserialize_by_shape!(RawRow, Completions, RawCompletion, Annotations, Annotation);

/// A map key: text as written.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Field::deserialize(d)? {
            Field::Text(text) => Ok(Key(text)),
            Field::Other(_) => Err(serde::de::Error::custom("a map key that is not text")),
        }
    }
}

/// Reads a map's entries: `field(key, map)` reads the value of a key it uses and says so; any
/// other value is read whole (and so checked) and dropped.
fn each_field<'de, A: MapAccess<'de>>(
    mut map: A,
    mut field: impl FnMut(&str, &mut A) -> Result<bool, A::Error>,
) -> Result<(), A::Error> {
    while let Some(Key(key)) = map.next_key()? {
        if !field(&key, &mut map)? {
            drop(map.next_value::<Value>()?);
        }
    }
    Ok(())
}

/// The line: `None` when it is not a JSON object.
pub(super) struct RawRow<'a>(pub Option<RowFields<'a>>);

#[derive(Default)]
pub(super) struct RowFields<'a> {
    pub id: Field<'a>,
    pub prompt: Field<'a>,
    pub completions: Completions<'a>,
}

impl<'de> Shape<'de> for RawRow<'de> {
    fn wrong() -> Self {
        RawRow(None)
    }
    fn map<A: MapAccess<'de>>(map: A) -> Result<Self, A::Error> {
        let mut row = RowFields::default();
        each_field(map, |key, map| {
            match key {
                "id" => row.id = map.next_value()?,
                "prompt" => row.prompt = map.next_value()?,
                "completions" => row.completions = map.next_value()?,
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        Ok(RawRow(Some(row)))
    }
}

/// `completions`: `None` when missing or not a list.
#[derive(Default)]
pub(super) struct Completions<'a>(pub Option<Vec<RawCompletion<'a>>>);

impl<'de> Shape<'de> for Completions<'de> {
    fn wrong() -> Self {
        Completions(None)
    }
    fn seq<A: SeqAccess<'de>>(mut seq: A) -> Result<Self, A::Error> {
        let mut all = Vec::with_capacity(seq.size_hint().unwrap_or(4));
        while let Some(completion) = seq.next_element()? {
            all.push(completion);
        }
        Ok(Completions(Some(all)))
    }
}

/// One completion; a value that is not a map has none of its fields.
#[derive(Default)]
pub(super) struct RawCompletion<'a> {
    pub model: Field<'a>,
    pub response: Field<'a>,
    pub annotations: Annotations<'a>,
}

impl<'de> Shape<'de> for RawCompletion<'de> {
    fn wrong() -> Self {
        RawCompletion::default()
    }
    fn map<A: MapAccess<'de>>(map: A) -> Result<Self, A::Error> {
        let mut completion = RawCompletion::default();
        each_field(map, |key, map| {
            match key {
                "model" => completion.model = map.next_value()?,
                "response" => completion.response = map.next_value()?,
                "annotations" => completion.annotations = map.next_value()?,
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        Ok(completion)
    }
}

/// `annotations`: `None` when missing or not a map.
#[derive(Default)]
pub(super) struct Annotations<'a>(pub Option<AnnotationMap<'a>>);

/// Each key once, where it was first written, with its last value.
pub(super) struct AnnotationMap<'a> {
    pub entries: Vec<AnnotationEntry<'a>>,
    /// Keys written again after their first time.
    pub repeated: usize,
}

pub(super) struct AnnotationEntry<'a> {
    pub key: Cow<'a, str>,
    /// Among all keys as written, repeats included.
    pub position: usize,
    pub value: Annotation<'a>,
}

impl<'de> Shape<'de> for Annotations<'de> {
    fn wrong() -> Self {
        Annotations(None)
    }
    fn map<A: MapAccess<'de>>(mut map: A) -> Result<Self, A::Error> {
        let mut entries: Vec<AnnotationEntry<'de>> = Vec::with_capacity(3);
        let mut written = 0;
        while let Some(Key(key)) = map.next_key()? {
            let value = map.next_value()?;
            match entries.iter_mut().find(|entry| entry.key == key) {
                Some(entry) => entry.value = value,
                None => entries.push(AnnotationEntry { key, position: written, value }),
            }
            written += 1;
        }
        let repeated = written - entries.len();
        Ok(Annotations(Some(AnnotationMap { entries, repeated })))
    }
}

/// One aspect's annotation: null (as if absent), its `Rating` and `Rationale` when a map,
/// or neither when anything else.
#[derive(Default)]
pub(super) enum Annotation<'a> {
    #[default]
    Null,
    Fields {
        rating: Field<'a>,
        rationale: Field<'a>,
    },
}

impl<'de> Shape<'de> for Annotation<'de> {
    fn wrong() -> Self {
        Annotation::Fields { rating: Field::default(), rationale: Field::default() }
    }
    fn null() -> Self {
        Annotation::Null
    }
    fn map<A: MapAccess<'de>>(map: A) -> Result<Self, A::Error> {
        let (mut rating, mut rationale) = (Field::default(), Field::default());
        each_field(map, |key, map| {
            match key {
                "Rating" => rating = map.next_value()?,
                "Rationale" => rationale = map.next_value()?,
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        Ok(Annotation::Fields { rating, rationale })
    }
}
