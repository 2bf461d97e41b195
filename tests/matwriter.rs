//! A minimal MATLAB Level 5 MAT-file writer for tests: one 1xN struct array whose fields are
//! scalar doubles or strings, the shape of the Stanford Cars devkit's annotation files
//! (`annotations(i).bbox_x1 ... .class, .fname`). Lets a test write trimmed or relabeled devkit
//! files (e.g. `cars_test_annos_withlabels.mat`) from the real ones.

use std::path::Path;

/// One field value of a struct element.
#[derive(Debug, Clone, PartialEq)]
pub enum Field {
    Num(f64),
    Str(String),
}

const MI_INT8: u32 = 1;
const MI_UINT16: u32 = 4;
const MI_INT32: u32 = 5;
const MI_UINT32: u32 = 6;
const MI_DOUBLE: u32 = 9;
const MI_MATRIX: u32 = 14;
const MX_STRUCT: u32 = 2;
const MX_CHAR: u32 = 4;
const MX_DOUBLE: u32 = 6;
/// Field names are stored in fixed-width slots of this many bytes.
const NAME_SLOT: usize = 32;

/// A data element: tag (type, byte count), payload, zero padding to 8 bytes.
fn element(ty: u32, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + data.len().div_ceil(8) * 8);
    out.extend(ty.to_le_bytes());
    out.extend((data.len() as u32).to_le_bytes());
    out.extend(data);
    out.resize(8 + data.len().div_ceil(8) * 8, 0);
    out
}

fn u32s(v: &[u32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn i32s(v: &[i32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// A miMATRIX element: array flags (class), dimensions, name, then `body`.
fn matrix(class: u32, dims: &[i32], name: &str, body: &[u8]) -> Vec<u8> {
    let mut inner = element(MI_UINT32, &u32s(&[class, 0]));
    inner.extend(element(MI_INT32, &i32s(dims)));
    inner.extend(element(MI_INT8, name.as_bytes()));
    inner.extend(body);
    element(MI_MATRIX, &inner)
}

fn value(v: &Field) -> Vec<u8> {
    match v {
        Field::Num(x) => matrix(MX_DOUBLE, &[1, 1], "", &element(MI_DOUBLE, &x.to_le_bytes())),
        Field::Str(s) => {
            let codes: Vec<u8> = s.encode_utf16().flat_map(|c| c.to_le_bytes()).collect();
            let n = s.encode_utf16().count() as i32;
            matrix(MX_CHAR, &[1, n], "", &element(MI_UINT16, &codes))
        }
    }
}

/// Writes `var` as a 1 x rows.len() struct array with `fields` (rows hold values in that order).
pub fn write_struct_array(path: &Path, var: &str, fields: &[&str], rows: &[Vec<Field>]) {
    let mut header = b"MATLAB 5.0 MAT-file, written by splitmask-rs tests".to_vec();
    header.resize(116, b' ');
    header.extend([0u8; 8]);
    header.extend(0x0100u16.to_le_bytes());
    header.extend(b"IM");
    let mut names = Vec::with_capacity(NAME_SLOT * fields.len());
    for f in fields {
        let mut slot = f.as_bytes().to_vec();
        assert!(slot.len() < NAME_SLOT, "field name {f:?} too long");
        slot.resize(NAME_SLOT, 0);
        names.extend(slot);
    }
    let mut body = element(MI_INT32, &i32s(&[NAME_SLOT as i32]));
    body.extend(element(MI_INT8, &names));
    for row in rows {
        assert_eq!(row.len(), fields.len());
        for v in row {
            body.extend(value(v));
        }
    }
    let mut bytes = header;
    bytes.extend(matrix(MX_STRUCT, &[1, rows.len() as i32], var, &body));
    std::fs::write(path, bytes).unwrap();
}
