//! DomainNet: `<domain>/<class>/<file>.jpg` images with the official split lists
//! `<domain>_{train,test}.txt` (`clipart/aircraft_carrier/clipart_001_000018.jpg 0`).

use std::collections::BTreeMap;
use std::path::Path;

use super::listing::{read_lines, require, AdapterOptions, Listing, SourceImage};
use crate::error::{PipelineError, Result};

pub const DOMAINS: &[&str] = &["clipart", "infograph", "painting", "quickdraw", "real", "sketch"];

pub fn list(root: &Path, opts: &AdapterOptions) -> Result<Listing> {
    let domain = opts.domain.as_deref().ok_or_else(|| {
        PipelineError::Invalid(format!(
            "DomainNet needs a domain option, one of {}",
            DOMAINS.join(", ")
        ))
    })?;
    if !DOMAINS.contains(&domain) {
        return Err(PipelineError::Invalid(format!(
            "unknown DomainNet domain {domain:?}; known: {}",
            DOMAINS.join(", ")
        )));
    }
    let mut images = Vec::new();
    let mut class_of: BTreeMap<i32, String> = BTreeMap::new();
    let mut list_names = Vec::new();
    for split in ["train", "test"] {
        let name = format!("{domain}_{split}.txt");
        let path = require(root.join(&name), "the official DomainNet split list")?;
        list_names.push(name);
        for (line, text) in read_lines(&path)? {
            let bad = |message: &str| PipelineError::BadLine {
                path: path.clone(),
                line,
                message: message.to_string(),
                text: text.clone(),
            };
            let (rel, label) = text
                .rsplit_once(char::is_whitespace)
                .ok_or_else(|| bad("expected '<path> <label>'"))?;
            let label: i32 = label.parse().map_err(|_| bad("label is not an integer"))?;
            let parts: Vec<&str> = rel.split('/').collect();
            if parts.len() != 3 || parts[0] != domain || label < 0 {
                return Err(bad(&format!("expected '{domain}/<class>/<file> <label>=0..'")));
            }
            let class = parts[1].to_string();
            match class_of.get(&label) {
                Some(known) if *known != class => {
                    return Err(bad(&format!("label {label} was class {known:?} earlier")));
                }
                Some(_) => {}
                None => {
                    class_of.insert(label, class);
                }
            }
            let mut img = SourceImage::new(split, rel.to_string(), label);
            img.domain = Some(domain.to_string());
            images.push(img);
        }
    }
    let n = class_of.keys().next_back().map_or(0, |&l| l + 1);
    // A label with no image in either list still gets a name, so labels stay dense.
    let class_names = (0..n)
        .map(|l| class_of.get(&l).cloned().unwrap_or_else(|| format!("class_{l}")))
        .collect();
    let mut listing = Listing::new("domainnet", class_names);
    listing.images = images;
    listing.skip_unlisted(root, &[domain], "none", &list_names.join(" or "))?;
    Ok(listing)
}
