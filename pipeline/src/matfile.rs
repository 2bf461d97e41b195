//! A reader for MATLAB Level 5 MAT-files, enough for the Stanford Cars devkit: numeric arrays,
//! char arrays, cell arrays and struct arrays, zlib-compressed or not, little or big endian.
//! (The devkit's `.mat` files are v5; v7.3 files are HDF5 and are rejected with a clear error.)

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use flate2::read::ZlibDecoder;

#[derive(Debug, thiserror::Error)]
pub enum MatError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a MATLAB v5 MAT-file ({reason})")]
    Format { path: PathBuf, reason: String },
    #[error("{path}: variable '{name}' not found (found: {found:?})")]
    MissingVariable {
        path: PathBuf,
        name: String,
        found: Vec<String>,
    },
}

/// A decoded MATLAB value. Arrays keep MATLAB's column-major order.
#[derive(Debug, Clone, PartialEq)]
pub enum MatValue {
    Numeric {
        dims: Vec<usize>,
        data: Vec<f64>,
    },
    Char(String),
    Cell {
        dims: Vec<usize>,
        items: Vec<MatValue>,
    },
    /// One map per struct element, field name -> value.
    Struct {
        dims: Vec<usize>,
        elements: Vec<BTreeMap<String, MatValue>>,
    },
    /// Classes this reader does not decode (sparse, objects, function handles).
    Unsupported(u8),
}

impl MatValue {
    /// The first element of a numeric array (devkit fields are 1x1 doubles or uint8s).
    pub fn scalar(&self) -> Option<f64> {
        match self {
            MatValue::Numeric { data, .. } => data.first().copied(),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            MatValue::Char(s) => Some(s),
            _ => None,
        }
    }
}

const MI_INT8: u32 = 1;
const MI_UINT8: u32 = 2;
const MI_INT16: u32 = 3;
const MI_UINT16: u32 = 4;
const MI_INT32: u32 = 5;
const MI_UINT32: u32 = 6;
const MI_SINGLE: u32 = 7;
const MI_DOUBLE: u32 = 9;
const MI_INT64: u32 = 12;
const MI_UINT64: u32 = 13;
const MI_MATRIX: u32 = 14;
const MI_COMPRESSED: u32 = 15;
const MI_UTF8: u32 = 16;
const MI_UTF16: u32 = 17;
const MI_UTF32: u32 = 18;

const MX_CELL: u8 = 1;
const MX_STRUCT: u8 = 2;
const MX_CHAR: u8 = 4;

/// Reads every variable of a MAT-file.
pub fn read_mat(path: &Path) -> Result<BTreeMap<String, MatValue>, MatError> {
    let bytes = std::fs::read(path).map_err(|source| MatError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_mat(&bytes).map_err(|reason| MatError::Format {
        path: path.to_path_buf(),
        reason,
    })
}

/// Reads one variable, with an error naming the file and the variables it does have.
pub fn read_variable(path: &Path, name: &str) -> Result<MatValue, MatError> {
    let mut vars = read_mat(path)?;
    vars.remove(name).ok_or_else(|| MatError::MissingVariable {
        path: path.to_path_buf(),
        name: name.to_string(),
        found: vars.keys().cloned().collect(),
    })
}

pub fn parse_mat(bytes: &[u8]) -> Result<BTreeMap<String, MatValue>, String> {
    if bytes.len() < 128 {
        return Err(format!(
            "file is {} bytes, shorter than the 128-byte header",
            bytes.len()
        ));
    }
    if bytes.get(512..516) == Some(b"\x89HDF".as_slice()) {
        return Err("MAT v7.3 (HDF5) is not supported; re-save it with -v7".into());
    }
    let big_endian = match &bytes[126..128] {
        b"IM" => false,
        b"MI" => true,
        other => return Err(format!("bad endian indicator {other:?}")),
    };
    let r = Reader { big_endian };
    let mut vars = BTreeMap::new();
    let mut pos = 128;
    while pos + 8 <= bytes.len() {
        let (ty, data, next) = r.element(bytes, pos)?;
        pos = next;
        let (name, value) = match ty {
            MI_COMPRESSED => {
                let mut inflated = Vec::new();
                ZlibDecoder::new(data)
                    .read_to_end(&mut inflated)
                    .map_err(|e| format!("corrupt compressed element: {e}"))?;
                let (ty, inner, _) = r.element(&inflated, 0)?;
                if ty != MI_MATRIX {
                    continue;
                }
                r.matrix(inner)?
            }
            MI_MATRIX => r.matrix(data)?,
            _ => continue,
        };
        vars.insert(name, value);
    }
    Ok(vars)
}

struct Reader {
    big_endian: bool,
}

impl Reader {
    fn u32_at(&self, b: &[u8], pos: usize) -> Result<u32, String> {
        let s: [u8; 4] = b.get(pos..pos + 4).ok_or("truncated element tag")?.try_into().unwrap();
        Ok(if self.big_endian {
            u32::from_be_bytes(s)
        } else {
            u32::from_le_bytes(s)
        })
    }

    /// Returns (type, payload, position of the next element).
    fn element<'a>(&self, b: &'a [u8], pos: usize) -> Result<(u32, &'a [u8], usize), String> {
        let first = self.u32_at(b, pos)?;
        // Small data element: size in the upper 16 bits, data in the following 4 bytes.
        if first >> 16 != 0 {
            let n = (first >> 16) as usize;
            if n > 4 {
                return Err(format!("small element of {n} bytes at offset {pos}"));
            }
            let data = b.get(pos + 4..pos + 4 + n).ok_or("truncated small element")?;
            return Ok((first & 0xffff, data, pos + 8));
        }
        let n = self.u32_at(b, pos + 4)? as usize;
        let start = pos + 8;
        let data = b
            .get(start..start + n)
            .ok_or_else(|| format!("element at offset {pos} claims {n} bytes past the end"))?;
        // Compressed elements are not padded; everything else is padded to 8 bytes.
        let next = if first == MI_COMPRESSED {
            start + n
        } else {
            start + n.div_ceil(8) * 8
        };
        Ok((first, data, next))
    }

    fn numbers(&self, ty: u32, d: &[u8]) -> Result<Vec<f64>, String> {
        macro_rules! conv {
            ($t:ty, $n:expr) => {
                d.chunks_exact($n)
                    .map(|c| {
                        let a: [u8; $n] = c.try_into().unwrap();
                        (if self.big_endian {
                            <$t>::from_be_bytes(a)
                        } else {
                            <$t>::from_le_bytes(a)
                        }) as f64
                    })
                    .collect()
            };
        }
        Ok(match ty {
            MI_INT8 => d.iter().map(|&x| x as i8 as f64).collect(),
            MI_UINT8 | MI_UTF8 => d.iter().map(|&x| x as f64).collect(),
            MI_INT16 => conv!(i16, 2),
            MI_UINT16 | MI_UTF16 => conv!(u16, 2),
            MI_INT32 => conv!(i32, 4),
            MI_UINT32 | MI_UTF32 => conv!(u32, 4),
            MI_SINGLE => conv!(f32, 4),
            MI_DOUBLE => conv!(f64, 8),
            MI_INT64 => conv!(i64, 8),
            MI_UINT64 => conv!(u64, 8),
            other => return Err(format!("unknown numeric data type {other}")),
        })
    }

    /// Parses the payload of a miMATRIX element into (name, value).
    fn matrix(&self, d: &[u8]) -> Result<(String, MatValue), String> {
        if d.is_empty() {
            return Ok((
                String::new(),
                MatValue::Numeric {
                    dims: vec![0, 0],
                    data: vec![],
                },
            ));
        }
        let (_, flags, mut pos) = self.element(d, 0)?;
        // The class is the low byte of the first flags word.
        let class = *(if self.big_endian { flags.get(3) } else { flags.first() }).ok_or("short array flags")?;
        let (ty, dims_raw, p) = self.element(d, pos)?;
        pos = p;
        let dims: Vec<usize> = self.numbers(ty, dims_raw)?.into_iter().map(|x| x as usize).collect();
        // Dimensions come from the file: never trust them for an allocation size.
        let count = dims
            .iter()
            .try_fold(1usize, |a, &x| a.checked_mul(x))
            .ok_or("array dimensions overflow")?;
        let cap = count.min(d.len() / 8);
        let (_, name_raw, p) = self.element(d, pos)?;
        pos = p;
        let name = String::from_utf8_lossy(name_raw).into_owned();
        let value = match class {
            MX_CELL => {
                let mut items = Vec::with_capacity(cap);
                for _ in 0..count {
                    let (_, inner, p) = self.element(d, pos)?;
                    pos = p;
                    items.push(self.matrix(inner)?.1);
                }
                MatValue::Cell { dims, items }
            }
            MX_STRUCT => {
                let (ty, len_raw, p) = self.element(d, pos)?;
                pos = p;
                let name_len = *self.numbers(ty, len_raw)?.first().ok_or("no field name length")? as usize;
                let (_, names_raw, p) = self.element(d, pos)?;
                pos = p;
                if name_len == 0 {
                    return Err("struct field name length 0".into());
                }
                let fields: Vec<String> = names_raw
                    .chunks(name_len)
                    .map(|c| {
                        let end = c.iter().position(|&x| x == 0).unwrap_or(c.len());
                        String::from_utf8_lossy(&c[..end]).into_owned()
                    })
                    .filter(|s| !s.is_empty())
                    .collect();
                let mut elements = Vec::with_capacity(cap);
                for _ in 0..count {
                    let mut el = BTreeMap::new();
                    for f in &fields {
                        let (_, inner, p) = self.element(d, pos)?;
                        pos = p;
                        el.insert(f.clone(), self.matrix(inner)?.1);
                    }
                    elements.push(el);
                }
                MatValue::Struct { dims, elements }
            }
            MX_CHAR => {
                let (ty, raw, _) = self.element(d, pos)?;
                let codes = self.numbers(ty, raw)?;
                let s: String = if ty == MI_UTF8 {
                    String::from_utf8_lossy(raw).into_owned()
                } else {
                    // Multi-row char arrays are column-major; the devkit only has single rows.
                    codes.iter().filter_map(|&c| char::from_u32(c as u32)).collect()
                };
                MatValue::Char(s)
            }
            6..=15 => {
                let (ty, raw, _) = self.element(d, pos)?;
                MatValue::Numeric {
                    dims,
                    data: self.numbers(ty, raw)?,
                }
            }
            other => MatValue::Unsupported(other),
        };
        Ok((name, value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Flips `n` random bytes of `b[start..]` (an LCG, so the damage is reproducible).
    fn flip_bytes(b: &mut [u8], start: usize, n: usize, state: &mut u64) {
        for _ in 0..n {
            *state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let i = start + (*state >> 33) as usize % (b.len() - start);
            b[i] ^= (*state >> 17) as u8 | 1;
        }
    }

    #[test]
    fn damaged_files_are_errors_not_panics() {
        let Some(path) = schemas::shared_data::find("fixtures/stanford_cars/devkit/cars_meta.mat") else {
            return;
        };
        let bytes = std::fs::read(&path).unwrap();
        let names = match parse_mat(&bytes).unwrap().remove("class_names").unwrap() {
            MatValue::Cell { items, .. } => items,
            other => panic!("{other:?}"),
        };
        assert_eq!(names.len(), 196);
        // Truncations and byte flips anywhere: each parse returns, Ok or Err.
        for cut in (0..bytes.len()).step_by(97) {
            let _ = parse_mat(&bytes[..cut]);
        }
        let mut state = 12345u64;
        for _ in 0..2000 {
            let mut b = bytes.clone();
            flip_bytes(&mut b, 0, 3, &mut state);
            let _ = parse_mat(&b);
        }
        // The same flips inside the uncompressed matrix reach the array parser itself.
        let mut plain = bytes[..128].to_vec();
        let mut inflated = Vec::new();
        ZlibDecoder::new(&bytes[136..]).read_to_end(&mut inflated).unwrap();
        plain.extend_from_slice(&inflated);
        assert_eq!(parse_mat(&plain).unwrap().len(), 1);
        for endian in [b"IM", b"MI"] {
            plain[126..128].copy_from_slice(endian);
            for _ in 0..3000 {
                let mut b = plain.clone();
                flip_bytes(&mut b, 128, 2, &mut state);
                let _ = parse_mat(&b);
            }
        }
        // An empty body is an empty file, not an error.
        let mut fake = vec![b' '; 128];
        fake[126..128].copy_from_slice(b"IM");
        assert!(parse_mat(&fake).unwrap().is_empty());
    }
}
