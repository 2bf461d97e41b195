//! A fast proof that a baseline JPEG's entropy-coded data is whole: every Huffman code of every
//! block of every component is walked, no coefficient is dequantised, transformed or stored.
//!
//! Keeping an image's bytes needs no pixels, only proof that they decode. The full strict
//! decode (zune-jpeg) spends most of its time on work this proof does not need (writing
//! coefficients, the IDCT, upsampling); walking the codes alone is about three times cheaper.
//!
//! The walk is deliberately stricter than the decoder: it answers [`Walk::Clean`] only for the
//! layout that ordinary encoders write (one baseline Huffman scan of all three components,
//! 8-bit tables, the common subsamplings, no restart markers) when every block ends inside the
//! real data, no coefficient index passes 63, and the data ends at EOI. Anything else is
//! [`Walk::Unsure`], and the caller runs the full strict decoder, which then decides (and words
//! the error). So a clean walk never accepts what the decoder rejects, and a rejection is
//! always the decoder's own.

/// What the walk found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Walk {
    /// The entropy data of every block is complete and well-formed.
    Clean,
    /// Not proven: an uncommon layout, or data the full decoder must judge.
    Unsure,
}

/// Bits resolved by one table lookup.
const LOOKAHEAD: u32 = 10;
/// Table entry for a code longer than [`LOOKAHEAD`] bits or a prefix no code starts with.
const SLOW: u16 = 0;
/// Table entry for a symbol an 8-bit baseline stream cannot contain.
const BAD: u16 = u16::MAX;
/// Zero bytes after the data, so a block that runs past the end reads zeros instead of out of
/// bounds (the overrun is caught after the block): 64 symbols of at most 32 bits, plus a load.
const PAD: usize = 64 * 4 + 16;

/// One Huffman table: a [`LOOKAHEAD`]-bit lookup for short codes, the canonical-code bounds
/// for long ones.
struct Table {
    /// `bits to skip (code + magnitude) | advance << 5` (AC advance: 0 end of block, run+1,
    /// or 16 for ZRL), or [`SLOW`] / [`BAD`].
    fast: Box<[u16; 1 << LOOKAHEAD]>,
    /// Largest code of each length (left-aligned to 16 bits, exclusive bound), per length.
    max_code: [u32; 17],
    /// Index into `values` of the first code of each length, minus that code.
    offset: [i32; 17],
    values: [u8; 256],
    ac: bool,
}

impl Table {
    /// Builds a table from a DHT's 16 counts and its symbols; `None` for a malformed one.
    fn new(counts: &[u8; 16], symbols: &[u8], ac: bool) -> Option<Table> {
        let mut t = Table {
            fast: Box::new([SLOW; 1 << LOOKAHEAD]),
            max_code: [0; 17],
            offset: [0; 17],
            values: [0; 256],
            ac,
        };
        t.values[..symbols.len()].copy_from_slice(symbols);
        let (mut code, mut k) = (0u32, 0usize);
        for len in 1..=16u32 {
            let n = counts[len as usize - 1] as usize;
            t.offset[len as usize] = k as i32 - code as i32;
            // Codes of one length must fit in it (a prefix code); the all-ones code is
            // reserved.
            if code + n as u32 >= (1 << len) {
                return None;
            }
            for _ in 0..n {
                if len <= LOOKAHEAD {
                    let entry = t.entry(symbols[k], len);
                    let shift = LOOKAHEAD - len;
                    let first = (code << shift) as usize;
                    t.fast[first..first + (1 << shift)].fill(entry);
                }
                code += 1;
                k += 1;
            }
            t.max_code[len as usize] = code << (16 - len);
            code <<= 1;
        }
        Some(t)
    }

    fn entry(&self, symbol: u8, code_len: u32) -> u16 {
        let (skip, advance) = match self.symbol(symbol) {
            Some(s) => s,
            None => return BAD,
        };
        (code_len + skip) as u16 | (advance << 5)
    }

    /// Magnitude bits and coefficient advance of a symbol; `None` where 8-bit data has none.
    fn symbol(&self, symbol: u8) -> Option<(u32, u16)> {
        if !self.ac {
            // A DC difference of 8-bit samples has at most 11 magnitude bits.
            return (symbol <= 11).then_some((u32::from(symbol), 0));
        }
        let (run, size) = (symbol >> 4, symbol & 15);
        match (run, size) {
            (0, 0) => Some((0, 0)),
            (15, 0) => Some((0, 16)),
            (_, 0) => None,
            (_, s) if s > 10 => None,
            (r, s) => Some((u32::from(s), u16::from(r) + 1)),
        }
    }

    /// Bits to skip and advance for the symbol at the top of `window`; `None` for no code.
    #[inline(always)]
    fn decode(&self, window: u64) -> Option<(u32, u16)> {
        let e = self.fast[(window >> (64 - LOOKAHEAD)) as usize];
        if e != SLOW && e != BAD {
            return Some((u32::from(e & 31), e >> 5));
        }
        if e == BAD {
            return None;
        }
        self.decode_long(window)
    }

    #[cold]
    fn decode_long(&self, window: u64) -> Option<(u32, u16)> {
        let top = (window >> 48) as u32;
        for len in LOOKAHEAD + 1..=16 {
            if top < self.max_code[len as usize] {
                let code = (top >> (16 - len)) as i32;
                let symbol = self.values[(code + self.offset[len as usize]) as usize];
                let (skip, advance) = self.symbol(symbol)?;
                return Some((len + skip, advance));
            }
        }
        None
    }
}

/// The unstuffed entropy data followed by [`PAD`] zeros, read through a 64-bit buffer that a
/// branch-free refill keeps at 56 or more bits (enough for two AC codes with their magnitude
/// bits), so the serial chain from one code to the next is a shift and a table load.
struct Bits {
    data: Vec<u8>,
    /// Next byte to load into `buf`.
    next: usize,
    /// Unread bits, top-aligned.
    buf: u64,
    /// How many bits of `buf` are valid.
    count: u32,
}

impl Bits {
    fn new(data: Vec<u8>) -> Bits {
        let mut bits = Bits {
            data,
            next: 0,
            buf: 0,
            count: 0,
        };
        bits.refill();
        bits
    }

    #[inline(always)]
    fn refill(&mut self) {
        let word = u64::from_be_bytes(self.data[self.next..self.next + 8].try_into().expect("8 bytes"));
        self.buf |= word >> self.count;
        self.next += ((63 - self.count) >> 3) as usize;
        self.count |= 56;
    }

    #[inline(always)]
    fn consume(&mut self, n: u32) {
        self.buf <<= n;
        self.count -= n;
    }

    /// Bits read so far.
    fn position(&self) -> usize {
        self.next * 8 - self.count as usize
    }
}

struct Component {
    id: u8,
    h: u8,
    v: u8,
    quant: u8,
}

/// Walks `raw` (a whole JPEG file); see the module doc for what [`Walk::Clean`] promises.
pub fn walk(raw: &[u8]) -> Walk {
    walk_inner(raw).unwrap_or(Walk::Unsure)
}

fn walk_inner(raw: &[u8]) -> Option<Walk> {
    if raw.get(..2)? != [0xFF, 0xD8] {
        return None;
    }
    let (headers, scan_tables, data_start) = read_headers(raw)?;
    walk_scan(raw, &headers, &scan_tables, data_start)
}

/// What the segments before the scan define.
#[derive(Default)]
struct Headers {
    dc: [Option<Table>; 4],
    ac: [Option<Table>; 4],
    quant_defined: [bool; 4],
    frame: Option<Frame>,
}

/// The scan's (DC, AC) table index for each component.
type ScanTables = Vec<(usize, usize)>;

struct Frame {
    width: u16,
    height: u16,
    comps: Vec<Component>,
}

/// The header segments up to the scan: what they define, the scan's (DC, AC) table per
/// component, and where the entropy-coded data starts.
fn read_headers(raw: &[u8]) -> Option<(Headers, ScanTables, usize)> {
    let mut h = Headers::default();
    let mut at = 2;
    loop {
        let (marker, body) = next_segment(raw, &mut at)?;
        match marker {
            // Baseline and extended sequential Huffman frames.
            0xC0 | 0xC1 => h.read_frame(body)?,
            0xC4 => h.read_huffman_tables(body)?,
            0xDB => h.read_quant_tables(body)?,
            // A restart interval of zero is no restart interval.
            0xDD => {
                if body.len() != 2 || body != [0, 0] {
                    return None;
                }
            }
            0xE0..=0xEF | 0xFE => {}
            0xDA => {
                let tables = h.scan_tables(body)?;
                return Some((h, tables, at));
            }
            _ => return None,
        }
    }
}

/// The marker and body of the segment at `at`, which moves past it.
fn next_segment<'a>(raw: &'a [u8], at: &mut usize) -> Option<(u8, &'a [u8])> {
    // Fill bytes before a marker are legal, other bytes between segments are not here.
    if *raw.get(*at)? != 0xFF {
        return None;
    }
    while *raw.get(*at + 1)? == 0xFF {
        *at += 1;
    }
    let marker = raw[*at + 1];
    let len = usize::from(u16::from_be_bytes([*raw.get(*at + 2)?, *raw.get(*at + 3)?]));
    let body = raw.get(*at + 4..(*at + 2 + len).max(*at + 4))?;
    if len < 2 {
        return None;
    }
    *at += 2 + len;
    Some((marker, body))
}

impl Headers {
    fn read_frame(&mut self, body: &[u8]) -> Option<()> {
        if self.frame.is_some() || body.len() < 6 || body[0] != 8 {
            return None;
        }
        let height = u16::from_be_bytes([body[1], body[2]]);
        let width = u16::from_be_bytes([body[3], body[4]]);
        let n = usize::from(body[5]);
        if n != 3 || body.len() != 6 + 3 * n || width == 0 || height == 0 {
            return None;
        }
        let comps = body[6..]
            .chunks_exact(3)
            .map(|c| Component {
                id: c[0],
                h: c[1] >> 4,
                v: c[1] & 15,
                quant: c[2],
            })
            .collect();
        self.frame = Some(Frame { width, height, comps });
        Some(())
    }

    fn read_huffman_tables(&mut self, body: &[u8]) -> Option<()> {
        let mut rest = body;
        while !rest.is_empty() {
            let (class, id) = (rest[0] >> 4, usize::from(rest[0] & 15));
            let counts: &[u8; 16] = rest.get(1..17)?.try_into().ok()?;
            let total = counts.iter().map(|&c| usize::from(c)).sum::<usize>();
            let symbols = rest.get(17..17 + total)?;
            if id > 3 || class > 1 || total > 256 {
                return None;
            }
            let table = Some(Table::new(counts, symbols, class == 1)?);
            if class == 0 {
                self.dc[id] = table;
            } else {
                self.ac[id] = table;
            }
            rest = &rest[17 + total..];
        }
        Some(())
    }

    fn read_quant_tables(&mut self, body: &[u8]) -> Option<()> {
        let mut rest = body;
        while !rest.is_empty() {
            // 8-bit tables only: 16-bit ones are legal in extended frames but rare.
            if rest[0] >> 4 != 0 || rest[0] & 15 > 3 || rest.len() < 65 {
                return None;
            }
            self.quant_defined[usize::from(rest[0] & 15)] = true;
            rest = &rest[65..];
        }
        Some(())
    }

    /// The (DC, AC) table of each component of a start-of-scan body, all of them defined.
    fn scan_tables(&self, body: &[u8]) -> Option<ScanTables> {
        let comps = &self.frame.as_ref()?.comps;
        let n = usize::from(*body.first()?);
        if n != comps.len() || body.len() != 1 + 2 * n + 3 {
            return None;
        }
        if body[1 + 2 * n..] != [0, 63, 0] {
            return None;
        }
        let mut tables = Vec::with_capacity(n);
        for (sel, comp) in body[1..1 + 2 * n].chunks_exact(2).zip(comps) {
            let (d, a) = (usize::from(sel[1] >> 4), usize::from(sel[1] & 15));
            if sel[0] != comp.id || d > 3 || a > 3 || self.dc[d].is_none() || self.ac[a].is_none() {
                return None;
            }
            if comp.quant > 3 || !self.quant_defined[usize::from(comp.quant)] {
                return None;
            }
            tables.push((d, a));
        }
        Some(tables)
    }
}

/// Walks every block of every MCU of the scan starting at `data_start`.
fn walk_scan(raw: &[u8], h: &Headers, scan_tables: &[(usize, usize)], data_start: usize) -> Option<Walk> {
    let Frame { width, height, comps } = h.frame.as_ref()?;
    let (h_max, v_max) = (comps[0].h, comps[0].v);
    let common =
        matches!((h_max, v_max), (1, 1) | (1, 2) | (2, 1) | (2, 2)) && comps[1..].iter().all(|c| c.h == 1 && c.v == 1);
    if !common {
        return None;
    }
    let mut bits = Bits::new(unstuff(raw, data_start)?);
    let end = (bits.data.len() - PAD) * 8;
    let mcus_x = usize::from(*width).div_ceil(8 * usize::from(h_max));
    let mcus_y = usize::from(*height).div_ceil(8 * usize::from(v_max));
    let blocks: Vec<(&Table, &Table, usize)> = scan_tables
        .iter()
        .zip(comps)
        .map(|(&(d, a), c)| Some((h.dc[d].as_ref()?, h.ac[a].as_ref()?, usize::from(c.h * c.v))))
        .collect::<Option<_>>()?;
    for _ in 0..mcus_x * mcus_y {
        for &(dc, ac, n) in &blocks {
            for _ in 0..n {
                if !walk_block(&mut bits, dc, ac) || bits.position() > end {
                    return None;
                }
            }
        }
    }
    // What is left is the padding of the last byte.
    (end - bits.position() < 8).then_some(Walk::Clean)
}

/// One block: the DC code and its magnitude bits, then AC codes up to the end of block or the
/// 63rd coefficient. False for a code no table has or a run past the block.
///
/// A code with its magnitude bits is at most 27 bits (DC) or 26 (AC) and a refill leaves 56 or
/// more, so one refill serves two codes: the refill's load is off every other step of the
/// chain from code to code.
#[inline(always)]
fn walk_block(bits: &mut Bits, dc: &Table, ac: &Table) -> bool {
    /// One AC code; returns from the block where it ends it (true for a proper end).
    macro_rules! ac_code {
        ($k:ident) => {{
            let Some((skip, advance)) = ac.decode(bits.buf) else {
                return false;
            };
            bits.consume(skip);
            if advance == 0 {
                return true;
            }
            $k += advance;
            if $k >= 64 {
                return $k == 64;
            }
        }};
    }
    bits.refill();
    let Some((skip, _)) = dc.decode(bits.buf) else {
        return false;
    };
    bits.consume(skip);
    let mut k = 1u16;
    ac_code!(k);
    loop {
        bits.refill();
        ac_code!(k);
        ac_code!(k);
    }
}

/// The entropy data from `start` to EOI with stuffed zero bytes removed, then [`PAD`] zeros;
/// `None` when anything but EOI ends it (a restart or other marker, fill bytes, or the end of
/// the file).
fn unstuff(raw: &[u8], start: usize) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(raw.len().saturating_sub(start) + PAD);
    let mut at = start;
    loop {
        let ff = at + memchr::memchr(0xFF, raw.get(at..)?)?;
        out.extend_from_slice(&raw[at..ff]);
        match *raw.get(ff + 1)? {
            0x00 => {
                out.push(0xFF);
                at = ff + 2;
            }
            0xD9 => break,
            _ => return None,
        }
    }
    out.resize(out.len() + PAD, 0);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn photo(w: u32, h: u32, seed: u64) -> Vec<u8> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let img = image::RgbImage::from_fn(w, h, |x, y| {
            let n: u8 = rng.random_range(0..40);
            image::Rgb([(x * 3) as u8 ^ n, (y * 5) as u8, ((x + y) as u8).wrapping_add(n)])
        });
        let mut out = Vec::new();
        jpeg_encoder::Encoder::new(&mut out, 90)
            .encode(img.as_raw(), w as u16, h as u16, jpeg_encoder::ColorType::Rgb)
            .unwrap();
        out
    }

    fn strict_decode_ok(raw: &[u8]) -> bool {
        let opts = zune_core::options::DecoderOptions::default().set_strict_mode(true);
        zune_jpeg::JpegDecoder::new_with_options(zune_core::bytestream::ZCursor::new(raw), opts)
            .decode()
            .is_ok()
    }

    #[test]
    fn whole_encoder_output_is_clean_and_cut_or_damaged_output_is_not() {
        for (w, h, seed) in [(64, 48, 1), (97, 131, 2), (8, 8, 3), (300, 17, 4)] {
            let raw = photo(w, h, seed);
            assert_eq!(walk(&raw), Walk::Clean, "{w}x{h}");
            // Cutting inside the entropy data, or dropping EOI, is never clean.
            for cut in [raw.len() - 2, raw.len() - 3, raw.len() * 3 / 4, raw.len() / 2] {
                assert_eq!(walk(&raw[..cut]), Walk::Unsure, "{w}x{h} cut at {cut}");
            }
            // Data that ends at EOI too early (the blocks would run on into nothing), or that
            // goes on after the last block.
            let body = raw.len() - 2;
            let n = (body - raw.len() * 3 / 4).min(24);
            let short = [&raw[..body - n], &raw[body..]].concat();
            assert_eq!(walk(&short), Walk::Unsure, "{w}x{h} with {n} bytes too few");
            let long = [&raw[..body], &[0x55; 4][..], &raw[body..]].concat();
            assert_eq!(walk(&long), Walk::Unsure, "{w}x{h} with 4 bytes after the last block");
        }
    }

    #[test]
    fn a_clean_walk_is_never_something_the_strict_decoder_rejects() {
        // Random damage in the entropy data: most of it still walks (JPEG has no checksum), and
        // whatever walks clean must also decode; the rest is left to the decoder.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let raw = photo(120, 90, 5);
        let (mut clean, mut unsure) = (0, 0);
        for _ in 0..400 {
            let mut bad = raw.clone();
            for _ in 0..rng.random_range(1..4) {
                let i = rng.random_range(raw.len() / 4..raw.len() - 2);
                bad[i] = rng.random();
            }
            if rng.random_bool(0.3) {
                bad.truncate(rng.random_range(raw.len() / 2..raw.len()));
            }
            match walk(&bad) {
                Walk::Clean => {
                    clean += 1;
                    assert!(
                        strict_decode_ok(&bad),
                        "walked clean, yet the strict decoder rejects it"
                    );
                }
                Walk::Unsure => unsure += 1,
            }
        }
        assert!(clean > 20 && unsure > 20, "clean {clean}, unsure {unsure}");
    }

    #[test]
    fn uncommon_layouts_are_left_to_the_decoder() {
        // Progressive, grayscale and CMYK (written by PIL) are not this walk's layout.
        for raw in [
            &include_bytes!("../tests/fixtures/progressive.jpg")[..],
            include_bytes!("../tests/fixtures/gray.jpg"),
            include_bytes!("../tests/fixtures/cmyk.jpg"),
        ] {
            assert!(strict_decode_ok(raw));
            assert_eq!(walk(raw), Walk::Unsure);
        }
        // A restart interval, and markers in the wrong place.
        let raw = photo(64, 64, 6);
        let sos = raw.windows(2).position(|w| w == [0xFF, 0xDA]).unwrap();
        let mut dri = raw[..sos].to_vec();
        dri.extend_from_slice(&[0xFF, 0xDD, 0, 4, 0, 8]);
        dri.extend_from_slice(&raw[sos..]);
        assert_eq!(walk(&dri), Walk::Unsure);
        let mut zero_dri = raw[..sos].to_vec();
        zero_dri.extend_from_slice(&[0xFF, 0xDD, 0, 4, 0, 0]);
        zero_dri.extend_from_slice(&raw[sos..]);
        assert_eq!(walk(&zero_dri), Walk::Clean);
        assert_eq!(walk(&raw[2..]), Walk::Unsure);
        assert_eq!(walk(b""), Walk::Unsure);
    }

    #[test]
    fn long_codes_take_the_slow_path_and_agree_with_the_lookup() {
        // A table with codes of every length from 1 to 16: the canonical decode of each code
        // must give back its symbol's skip.
        let mut counts = [0u8; 16];
        counts.iter_mut().for_each(|c| *c = 1);
        let symbols: Vec<u8> = (0..16).map(|i| ((i % 15) << 4 | (i % 10 + 1)) as u8).collect();
        let t = Table::new(&counts, &symbols, true).unwrap();
        // Code of length L is L-1 ones then a zero.
        for (i, &s) in symbols.iter().enumerate() {
            let len = i as u32 + 1;
            let code = ((1u64 << len) - 2) << (64 - len);
            let (skip, advance) = t.decode(code).unwrap();
            assert_eq!(skip, len + u32::from(s & 15), "length {len}");
            assert_eq!(advance, u16::from(s >> 4) + 1);
        }
        // The all-ones prefix is no code.
        assert_eq!(t.decode(u64::MAX), None);
        // Too many codes for their lengths is no table.
        assert!(Table::new(&[3; 16], &[1; 48], true).is_none());
    }
}
