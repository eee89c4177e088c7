//! Page sizes checked before the `parquet` crate decompresses a page. The crate allocates and
//! zero-fills a buffer of the size a page header claims once decompressed (up to 2 GiB, an
//! `i32`) before the codec finds that the page's bytes cannot fill it: a 1.2 KB file reached
//! 1.4 GB of memory (found by the `parquet` fuzz target). [`check_page_sizes`] walks the page
//! headers of the column chunks to be read, as the crate will, and refuses a page that claims more
//! uncompressed bytes than its codec can produce from its compressed bytes.
//!
//! The crate keeps its page header decoder private, so the headers are decoded here: only the
//! Thrift compact protocol subset a page header uses, read the way the crate reads it (fields by
//! id whatever their wire type, the same nested structs, the same rules for skipping unknown
//! fields), so that both find the same header length and sizes. A header this decoder cannot read
//! is left to the crate, which cannot read it either and refuses the file without decompressing.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use parquet::basic::Compression;
use parquet::file::metadata::ParquetMetaData;

/// `PageType::INDEX_PAGE`: the crate skips such pages without decompressing them.
const INDEX_PAGE: i32 = 1;

/// How many times a codec can expand its input, as a fraction, or `None` when the crate does not
/// decompress the page (`UNCOMPRESSED`: the page's bytes are used as they are, whatever size the
/// header claims). Snappy's longest output per input byte is a 3-byte copy of 64 bytes; its
/// stream also starts with a length that produces nothing. The other codecs are not compiled into
/// this build of the crate, which refuses their column chunks before reading a page
/// (`tests::a_codec_this_build_cannot_decode_is_refused_before_any_page_is_read`); a codec added to
/// the build needs its own bound here.
fn max_expansion(codec: Compression) -> Option<(u64, u64, &'static str)> {
    match codec {
        Compression::SNAPPY => Some((64, 3, "Snappy")),
        _ => None,
    }
}

/// Refuses a page of a column chunk to be read (the leaves under `roots`) whose header claims more
/// uncompressed bytes than its codec can expand its compressed bytes to, naming the row group,
/// column, page offset and both sizes.
pub(super) fn check_page_sizes(
    path: &Path,
    metadata: &ParquetMetaData,
    roots: &[usize],
) -> Result<(), String> {
    let schema = metadata.file_metadata().schema_descr();
    let file = File::open(path).map_err(|e| e.to_string())?;
    let mut input = BufReader::new(file);
    for (group_index, group) in metadata.row_groups().iter().enumerate() {
        for (leaf, column) in group.columns().iter().enumerate() {
            if leaf >= schema.num_columns() || !roots.contains(&schema.get_column_root_idx(leaf)) {
                continue;
            }
            let Some((numerator, denominator, codec)) = max_expansion(column.compression()) else {
                continue;
            };
            let (start, length) = column.byte_range();
            for_each_page(&mut input, start, length, |offset, header| {
                let most = header.compressed as u64 * numerator / denominator;
                if header.page_type == INDEX_PAGE || header.uncompressed as u64 <= most {
                    return Ok(());
                }
                Err(format!(
                    "the file is corrupt: row group {group_index}, column `{}`: the page at \
                     byte {offset} claims {} bytes once decompressed from {} compressed bytes; \
                     expected at most {most} ({codec} expands data at most \
                     {numerator}/{denominator} times)",
                    column.column_path().string(),
                    header.uncompressed,
                    header.compressed
                ))
            })?;
        }
    }
    Ok(())
}

/// The sizes of one page header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Sizes {
    pub(super) page_type: i32,
    /// Not negative, as the crate requires before decompressing.
    pub(super) uncompressed: i32,
    /// Not negative and within the chunk.
    pub(super) compressed: i32,
}

/// Calls `visit` with the offset and sizes of each page of the column chunk at
/// `start..start + length`, walking it as the crate's page reader does (header, body, next
/// header, until the chunk's bytes are used up); returns how many pages were visited. Stops
/// early, without an error, where the crate would refuse the chunk itself: a header it cannot
/// decode, one running past the chunk, or sizes that are negative or larger than what is left.
pub(super) fn for_each_page<R: Read + Seek>(
    input: &mut R,
    start: u64,
    length: u64,
    mut visit: impl FnMut(u64, Sizes) -> Result<(), String>,
) -> Result<usize, String> {
    let (mut offset, mut remaining) = (start, length);
    let mut pages = 0;
    while remaining > 0 {
        if input.seek(SeekFrom::Start(offset)).is_err() {
            break;
        }
        let mut header = Header {
            input: &mut *input,
            read: 0,
            limit: remaining,
        };
        let Some(sizes) = header.page_header() else {
            break;
        };
        let header_length = header.read;
        if sizes.uncompressed < 0
            || sizes.compressed < 0
            || sizes.compressed as u64 > remaining - header_length
        {
            break;
        }
        visit(offset, sizes)?;
        pages += 1;
        offset += header_length + sizes.compressed as u64;
        remaining -= header_length + sizes.compressed as u64;
    }
    Ok(pages)
}

/// Thrift compact protocol field types (and list element types, where 1 and 2 both mean bool).
const STRUCT: u8 = 12;

/// How the crate reads a field of a struct it knows, by field id.
#[derive(Clone, Copy)]
enum Field {
    /// An `i32` or enum: a zigzag varint, whatever the wire type says.
    Int,
    /// A bool: the value is the wire type (true or false), any other type is an error.
    Bool,
    /// Unknown: skipped according to its wire type.
    Skip,
}

/// `DataPageHeader`, statistics skipped.
fn data_page_header(id: i16) -> Field {
    match id {
        1..=4 => Field::Int,
        _ => Field::Skip,
    }
}

/// `IndexPageHeader`: no fields.
fn index_page_header(_: i16) -> Field {
    Field::Skip
}

/// `DictionaryPageHeader`.
fn dictionary_page_header(id: i16) -> Field {
    match id {
        1 | 2 => Field::Int,
        3 => Field::Bool,
        _ => Field::Skip,
    }
}

/// `DataPageHeaderV2`, statistics skipped.
fn data_page_header_v2(id: i16) -> Field {
    match id {
        1..=6 => Field::Int,
        7 => Field::Bool,
        _ => Field::Skip,
    }
}

/// The crate's limit on nested skipping.
const SKIP_DEPTH: u32 = 64;

/// A page header being decoded from `input`: `read` bytes so far, at most `limit`. Each method
/// returns `None` where the crate's decoder fails (or the header runs past the column chunk,
/// which the crate refuses as well).
struct Header<'a, R> {
    input: &'a mut R,
    read: u64,
    limit: u64,
}

impl<R: Read> Header<'_, R> {
    /// The sizes of the `PageHeader` struct at the start of the input.
    fn page_header(&mut self) -> Option<Sizes> {
        let (mut page_type, mut uncompressed, mut compressed) = (None, None, None);
        let mut last = 0i16;
        while let Some((id, wire)) = self.field_begin(last)? {
            match id {
                1 => page_type = Some(self.int()?),
                2 => uncompressed = Some(self.int()?),
                3 => compressed = Some(self.int()?),
                4 => {
                    self.int()?;
                }
                5 => self.read_struct(data_page_header)?,
                6 => self.read_struct(index_page_header)?,
                7 => self.read_struct(dictionary_page_header)?,
                8 => self.read_struct(data_page_header_v2)?,
                _ => self.skip(wire, SKIP_DEPTH)?,
            }
            last = id;
        }
        Some(Sizes {
            page_type: page_type?,
            uncompressed: uncompressed?,
            compressed: compressed?,
        })
    }

    /// A struct whose fields the crate knows by `fields`.
    fn read_struct(&mut self, fields: fn(i16) -> Field) -> Option<()> {
        let mut last = 0i16;
        while let Some((id, wire)) = self.field_begin(last)? {
            match fields(id) {
                Field::Int => {
                    self.int()?;
                }
                Field::Bool => {
                    if wire != 1 && wire != 2 {
                        return None;
                    }
                }
                Field::Skip => self.skip(wire, SKIP_DEPTH)?,
            }
            last = id;
        }
        Some(())
    }

    fn byte(&mut self) -> Option<u8> {
        if self.read >= self.limit {
            return None;
        }
        let mut byte = [0u8; 1];
        self.input.read_exact(&mut byte).ok()?;
        self.read += 1;
        Some(byte[0])
    }

    fn skip_bytes(&mut self, n: u64) -> Option<()> {
        if n > self.limit - self.read {
            return None;
        }
        let copied = std::io::copy(&mut self.input.by_ref().take(n), &mut std::io::sink()).ok()?;
        self.read += copied;
        (copied == n).then_some(())
    }

    /// An unsigned varint; bits past the 64th wrap around, as in the crate.
    fn varint(&mut self) -> Option<u64> {
        let (mut value, mut shift) = (0u64, 0u32);
        loop {
            let byte = self.byte()?;
            value |= u64::from(byte & 0x7f).wrapping_shl(shift);
            if byte & 0x80 == 0 {
                return Some(value);
            }
            shift = shift.wrapping_add(7);
        }
    }

    fn zigzag(&mut self) -> Option<i64> {
        let value = self.varint()?;
        Some((value >> 1) as i64 ^ -((value & 1) as i64))
    }

    /// An `i32` (or enum) field's value: a zigzag varint, cut to 32 bits as the crate does.
    fn int(&mut self) -> Option<i32> {
        Some(self.zigzag()? as i32)
    }

    /// The next field's id and wire type, or `Ok(None)` (as `Some(None)`) at the struct's end.
    fn field_begin(&mut self, last: i16) -> Option<Option<(i16, u8)>> {
        let byte = self.byte()?;
        let wire = byte & 0x0f;
        if wire == 0 {
            return Some(None);
        }
        if wire > 13 {
            return None;
        }
        let delta = byte >> 4;
        let id = if delta != 0 {
            last.checked_add(i16::from(delta))?
        } else {
            self.zigzag()? as i16
        };
        Some(Some((id, wire)))
    }

    /// A list, set or map element type as a field type (1 and 2 are both bool).
    fn element_type(nibble: u8) -> Option<u8> {
        match nibble {
            1 | 2 => Some(1),
            3..=13 => Some(nibble),
            _ => None,
        }
    }

    /// Skips a value of wire type `wire`, at most `depth` levels deep.
    fn skip(&mut self, wire: u8, depth: u32) -> Option<()> {
        if depth == 0 {
            return None;
        }
        match wire {
            1 | 2 => Some(()),
            3 => self.byte().map(drop),
            4..=6 => self.varint().map(drop),
            7 => self.skip_bytes(8),
            8 => {
                let length = self.varint()?;
                self.skip_bytes(length)
            }
            STRUCT => {
                while let Some((_, inner)) = self.field_begin(0)? {
                    self.skip(inner, depth - 1)?;
                }
                Some(())
            }
            9 | 10 => {
                let header = self.byte()?;
                if header == 0 {
                    return Some(());
                }
                let element = Self::element_type(header & 0x0f)?;
                let count = match header >> 4 {
                    15 => i32::try_from(self.varint()?).ok()?,
                    n => i32::from(n),
                };
                self.skip_elements(&[element], count, depth - 1)
            }
            11 => {
                let count = i32::try_from(self.varint()?).ok()?;
                if count <= 0 {
                    return Some(());
                }
                let types = self.byte()?;
                let key = Self::element_type(types >> 4)?;
                let value = Self::element_type(types & 0x0f)?;
                self.skip_elements(&[key, value], count, depth - 1)
            }
            13 => self.skip_bytes(16),
            _ => None,
        }
    }

    /// Skips `count` repetitions of values of the `types`. Bools take no bytes when the crate
    /// skips them, so a collection of bools only needs the depth check (and no loop of up to
    /// 2^31 steps).
    fn skip_elements(&mut self, types: &[u8], count: i32, depth: u32) -> Option<()> {
        if count <= 0 {
            return Some(());
        }
        if depth == 0 {
            return None;
        }
        if types.iter().all(|&t| t == 1) {
            return Some(());
        }
        for _ in 0..count {
            for &t in types {
                self.skip(t, depth)?;
            }
        }
        Some(())
    }
}
