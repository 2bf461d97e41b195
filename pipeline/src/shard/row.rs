//! The row type shared by the shard writer and reader.

/// One row of a shard.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub id: String,
    pub split: String,
    pub label: i32,
    pub image: Vec<u8>,
    pub path: String,
    pub width: i32,
    pub height: i32,
    pub bbox: Option<[i32; 4]>,
    pub coco_id: Option<i64>,
    pub domain: Option<String>,
    pub mask: Option<Vec<u8>>,
    pub mask_path: Option<String>,
}
