//! The bulk reads' row source: `COPY (SELECT …) TO STDOUT (FORMAT binary)`, parsed here.
//!
//! Why: through sqlx's row API, every row of a query is its own message, `PgRow` and trip
//! through an async stream, and every column a checked, type-compared `try_get`; at start-up
//! (1,000,000 versions of 20 columns, SPEC §12: loaded within 5 s) that per-row machinery cost
//! more than PostgreSQL's own work. A binary `COPY` hands over the same values, in the same
//! snapshot (it runs inside the caller's transaction), as length-prefixed fields that are
//! borrowed in place.
//!
//! What keeps it safe: the query's column types are checked once, before the copy, against the
//! types the reader expects (`describe`, one round trip), so a column altered by hand is
//! reported as `Corrupt` naming it instead of being misread; and every field's length is checked
//! against its type as it is read (see the readers at the end).

use futures_util::TryStreamExt;
use sqlx::{Column, Executor, PgConnection, TypeInfo};

use crate::StoreError;
use crate::rows::{self, Place};

/// At most this many columns per row.
const MAX_COLUMNS: usize = 24;

/// `PGCOPY\n\377\r\n\0`, then the flags and the header extension's length.
const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";

/// One row: its fields, `None` for SQL NULL.
pub(super) type Fields<'a> = [Option<&'a [u8]>];

/// Why a copy failed: the driver's error (for the caller's `fail`), or data that is not what it
/// should be.
pub(super) enum CopyError {
    Sqlx(sqlx::Error),
    Store(StoreError),
}

impl From<StoreError> for CopyError {
    fn from(e: StoreError) -> Self {
        CopyError::Store(e)
    }
}

/// Runs `select` as a binary copy on `conn` (inside the caller's transaction), after checking
/// that its columns have the PostgreSQL `types` named (`INT8`, `TEXT`, …), and hands every row
/// to `row` in order. `table` names the rows in errors.
pub(super) async fn copy_rows(
    conn: &mut PgConnection,
    select: &str,
    types: &[&str],
    table: &str,
    mut row: impl FnMut(&Fields<'_>) -> Result<(), StoreError>,
) -> Result<(), CopyError> {
    let described = conn.describe(select).await.map_err(CopyError::Sqlx)?;
    let columns = described.columns();
    if columns.len() != types.len() || types.len() > MAX_COLUMNS {
        return Err(CopyError::Store(StoreError::Corrupt(format!(
            "{table}: {} columns where {} were expected",
            columns.len(),
            types.len()
        ))));
    }
    for (column, expected) in columns.iter().zip(types) {
        let found = column.type_info().name();
        if found != *expected {
            return Err(CopyError::Store(StoreError::Corrupt(format!(
                "{table}: column {} is {found}, not {expected}",
                column.name()
            ))));
        }
    }
    let statement = format!("COPY ({select}) TO STDOUT (FORMAT binary)");
    let mut chunks = conn
        .copy_out_raw(&statement)
        .await
        .map_err(CopyError::Sqlx)?;
    let mut parser = Parser {
        columns: types.len(),
        header_read: false,
        done: false,
        table,
    };
    // Bytes of a row split across chunks (PostgreSQL sends a row per message, but nothing
    // promises it).
    let mut pending: Vec<u8> = Vec::new();
    while let Some(chunk) = chunks.try_next().await.map_err(CopyError::Sqlx)? {
        if pending.is_empty() {
            let used = parser.parse(&chunk, &mut row)?;
            pending.extend_from_slice(&chunk[used..]);
        } else {
            pending.extend_from_slice(&chunk);
            let used = parser.parse(&pending, &mut row)?;
            pending.drain(..used);
        }
    }
    if !parser.done || !pending.is_empty() {
        return Err(CopyError::Store(StoreError::Corrupt(format!(
            "{table}: the copy ended inside a row"
        ))));
    }
    Ok(())
}

struct Parser<'t> {
    columns: usize,
    header_read: bool,
    done: bool,
    table: &'t str,
}

impl Parser<'_> {
    fn damaged(&self, what: &str) -> StoreError {
        StoreError::Corrupt(format!("{}: unreadable copy data: {what}", self.table))
    }

    /// Parses every complete row at the start of `data`; returns how many bytes it used.
    fn parse(
        &mut self,
        data: &[u8],
        row: &mut impl FnMut(&Fields<'_>) -> Result<(), StoreError>,
    ) -> Result<usize, StoreError> {
        let mut at = 0;
        if !self.header_read {
            let fixed = SIGNATURE.len() + 8;
            let Some(header) = data.get(..fixed) else {
                return Ok(0);
            };
            if !header.starts_with(SIGNATURE) {
                return Err(self.damaged("no PGCOPY signature"));
            }
            let extension = be_u32(&header[fixed - 4..]) as usize;
            if data.len() < fixed + extension {
                return Ok(0);
            }
            at = fixed + extension;
            self.header_read = true;
        }
        let mut fields: [Option<&[u8]>; MAX_COLUMNS] = [None; MAX_COLUMNS];
        while !self.done {
            let Some(count) = data.get(at..at + 2) else {
                break;
            };
            let count = i16::from_be_bytes([count[0], count[1]]);
            if count == -1 {
                self.done = true;
                at += 2;
                break;
            }
            if usize::try_from(count).ok() != Some(self.columns) {
                return Err(self.damaged(&format!("a row of {count} fields")));
            }
            let mut cursor = at + 2;
            let mut complete = true;
            for field in fields.iter_mut().take(self.columns) {
                let Some(len) = data.get(cursor..cursor + 4) else {
                    complete = false;
                    break;
                };
                let len = i32::from_be_bytes([len[0], len[1], len[2], len[3]]);
                cursor += 4;
                if len < 0 {
                    *field = None;
                    continue;
                }
                let end = cursor + len as usize;
                let Some(value) = data.get(cursor..end) else {
                    complete = false;
                    break;
                };
                *field = Some(value);
                cursor = end;
            }
            if !complete {
                break;
            }
            row(&fields[..self.columns])?;
            at = cursor;
        }
        Ok(at)
    }
}

fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

// Field readers: a field of the wrong length (or NULL where the schema says NOT NULL) is
// `Corrupt` naming the row and the column.

fn wrong(place: Place<'_>, column: &str, expected: &str, found: Option<&[u8]>) -> StoreError {
    let found = match found {
        None => "NULL".to_owned(),
        Some(b) => format!("{} bytes", b.len()),
    };
    rows::corrupt(
        place,
        column,
        format_args!("expected {expected}, found {found}"),
    )
}

pub(super) fn int8(
    field: Option<&[u8]>,
    column: &str,
    place: Place<'_>,
) -> Result<i64, StoreError> {
    match field {
        Some(b) if b.len() == 8 => Ok(i64::from_be_bytes([
            b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7],
        ])),
        other => Err(wrong(place, column, "a BIGINT", other)),
    }
}

pub(super) fn int8_or_null(
    field: Option<&[u8]>,
    column: &str,
    place: Place<'_>,
) -> Result<Option<i64>, StoreError> {
    field.map(|_| int8(field, column, place)).transpose()
}

pub(super) fn boolean(
    field: Option<&[u8]>,
    column: &str,
    place: Place<'_>,
) -> Result<bool, StoreError> {
    match field {
        Some([b]) => Ok(*b != 0),
        other => Err(wrong(place, column, "a BOOLEAN", other)),
    }
}

pub(super) fn text<'a>(
    field: Option<&'a [u8]>,
    column: &str,
    place: Place<'_>,
) -> Result<&'a str, StoreError> {
    match field {
        Some(b) => {
            std::str::from_utf8(b).map_err(|_| rows::corrupt(place, column, "not UTF-8 text"))
        }
        None => Err(wrong(place, column, "text", None)),
    }
}

pub(super) fn text_or_null<'a>(
    field: Option<&'a [u8]>,
    column: &str,
    place: Place<'_>,
) -> Result<Option<&'a str>, StoreError> {
    field.map(|_| text(field, column, place)).transpose()
}

pub(super) fn bytea<'a>(
    field: Option<&'a [u8]>,
    column: &str,
    place: Place<'_>,
) -> Result<&'a [u8], StoreError> {
    field.ok_or_else(|| wrong(place, column, "bytes", None))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn encoded(rows: &[&[Option<&[u8]>]]) -> Vec<u8> {
        let mut out = SIGNATURE.to_vec();
        out.extend_from_slice(&0u32.to_be_bytes());
        out.extend_from_slice(&4u32.to_be_bytes());
        out.extend_from_slice(b"ext!");
        for row in rows {
            out.extend_from_slice(&(row.len() as i16).to_be_bytes());
            for field in *row {
                match field {
                    None => out.extend_from_slice(&(-1i32).to_be_bytes()),
                    Some(b) => {
                        out.extend_from_slice(&(b.len() as i32).to_be_bytes());
                        out.extend_from_slice(b);
                    }
                }
            }
        }
        out.extend_from_slice(&(-1i16).to_be_bytes());
        out
    }

    #[test]
    fn rows_split_anywhere_parse_the_same() {
        let rows: [&[Option<&[u8]>]; 3] = [
            &[Some(&7i64.to_be_bytes()), Some(b"abc"), None],
            &[Some(&8i64.to_be_bytes()), Some(b""), Some(&[1])],
            &[Some(&9i64.to_be_bytes()), None, Some(&[0])],
        ];
        let data = encoded(&rows);
        for split in 0..data.len() {
            let mut parser = Parser {
                columns: 3,
                header_read: false,
                done: false,
                table: "t",
            };
            let mut seen: Vec<Vec<Option<Vec<u8>>>> = Vec::new();
            let mut collect = |f: &Fields<'_>| {
                seen.push(f.iter().map(|v| v.map(<[u8]>::to_vec)).collect());
                Ok(())
            };
            let mut pending = Vec::new();
            for chunk in [&data[..split], &data[split..]] {
                pending.extend_from_slice(chunk);
                let used = parser.parse(&pending, &mut collect).ok().unwrap();
                pending.drain(..used);
            }
            assert!(parser.done && pending.is_empty(), "split at {split}");
            assert_eq!(seen.len(), 3, "split at {split}");
            assert_eq!(seen[0][1].as_deref(), Some(&b"abc"[..]));
            assert_eq!(seen[2][1], None);
        }
    }

    #[test]
    fn fields_of_the_wrong_length_are_named() {
        let place = || "t row".to_owned();
        let err = int8(Some(&[0; 4]), "grace_ms", &place).unwrap_err();
        assert!(
            err.to_string()
                .contains("t row: column grace_ms: expected a BIGINT, found 4 bytes"),
            "{err}"
        );
        assert!(boolean(None, "enforced", &place).is_err());
        assert_eq!(int8_or_null(None, "deadline", &place).ok().unwrap(), None);
    }
}
