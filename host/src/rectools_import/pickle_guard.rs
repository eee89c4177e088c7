//! A check of a checkpoint's pickle before anything decodes it.
//!
//! recblocks never runs code from a pickle, but decoding one can still be made to cost without
//! bound: a memoised object fetched again is copied, so a 44 KB file of lists of lists of the same
//! list expands to gigabytes, and a pickle nested 200,000 levels deep overflows the stack of any
//! recursive reader. This scan walks the opcodes once, without building anything: it tracks how
//! many objects each stack entry and memo entry would expand to and how deeply it nests, and
//! refuses the file when the expansion or the nesting passes a limit, when it names a Python
//! global outside [`ALLOWED_GLOBALS`] (anywhere in the file, not only where recblocks looks), or
//! when it uses a pickle protocol newer than the reader supports (torch.save writes protocol 2).

/// The Python globals a RecTools Lightning checkpoint references (tensors, storages, numpy
/// arrays and dtypes, ordered dicts, bytes decoding).
pub const ALLOWED_GLOBALS: &[&str] = &[
    "_codecs.encode",
    "collections.OrderedDict",
    "numpy.core.multiarray._reconstruct",
    "numpy._core.multiarray._reconstruct",
    "numpy.core.multiarray.scalar",
    "numpy._core.multiarray.scalar",
    "numpy.dtype",
    "numpy.ndarray",
    "torch._utils._rebuild_tensor_v2",
    "torch._utils._rebuild_parameter",
    "torch.BFloat16Storage",
    "torch.BoolStorage",
    "torch.ByteStorage",
    "torch.CharStorage",
    "torch.DoubleStorage",
    "torch.FloatStorage",
    "torch.HalfStorage",
    "torch.IntStorage",
    "torch.LongStorage",
    "torch.ShortStorage",
];

/// The deepest nesting accepted (a checkpoint nests a few levels).
pub const MAX_DEPTH: u32 = 1_000;
/// The most objects a pickle may expand to, beyond [`OBJECTS_PER_BYTE`] per byte of input.
pub const MAX_EXTRA_OBJECTS: u64 = 1_000_000;
/// Objects a pickle may expand to per byte of input (memo references multiply them).
pub const OBJECTS_PER_BYTE: u64 = 16;
/// The most objects any pickle may expand to (a decoded object takes about 60 bytes).
pub const MAX_OBJECTS: u64 = 20_000_000;

/// What a stack or memo entry would expand to.
#[derive(Debug, Clone, Copy)]
struct Shape {
    objects: u64,
    depth: u32,
}

const LEAF: Shape = Shape {
    objects: 1,
    depth: 1,
};

/// A stack entry: a mark, or an object (an index into the scan's objects, so that a container
/// filled after it was memoised is counted at its final size when the memo is read).
enum Entry {
    Mark,
    Value(usize),
}

/// The scanner's state.
struct Scan<'a> {
    bytes: &'a [u8],
    pos: usize,
    stack: Vec<Entry>,
    objects: Vec<Shape>,
    memo: std::collections::HashMap<u64, usize>,
    materialised: u64,
    limit: u64,
}

/// Checks a pickle (the bytes of a checkpoint's `data.pkl`); the error says what was refused
/// and where.
pub fn check_pickle(bytes: &[u8]) -> Result<(), String> {
    let limit = (bytes.len() as u64)
        .saturating_mul(OBJECTS_PER_BYTE)
        .saturating_add(MAX_EXTRA_OBJECTS)
        .min(MAX_OBJECTS);
    let mut scan = Scan {
        bytes,
        pos: 0,
        stack: Vec::new(),
        objects: Vec::new(),
        memo: std::collections::HashMap::new(),
        materialised: 0,
        limit,
    };
    scan.run()
}

impl Scan<'_> {
    fn fail<T>(&self, message: impl std::fmt::Display) -> Result<T, String> {
        Err(format!("pickle byte {}: {message}", self.pos))
    }

    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        match end {
            Some(end) => {
                let out = &self.bytes[self.pos..end];
                self.pos = end;
                Ok(out)
            }
            None => self.fail("the pickle ends inside an opcode's argument"),
        }
    }

    fn uint(&mut self, n: usize) -> Result<u64, String> {
        let raw = self.take(n)?;
        Ok(raw
            .iter()
            .rev()
            .fold(0u64, |acc, &b| (acc << 8) | u64::from(b)))
    }

    fn line(&mut self) -> Result<String, String> {
        let rest = &self.bytes[self.pos..];
        match rest.iter().position(|&b| b == b'\n') {
            Some(n) => {
                let text = String::from_utf8_lossy(&rest[..n]).into_owned();
                self.pos += n + 1;
                Ok(text)
            }
            None => self.fail("the pickle ends inside a text argument"),
        }
    }

    /// Skips a length-prefixed argument whose length has `n` bytes.
    fn counted(&mut self, n: usize) -> Result<(), String> {
        let len = self.uint(n)?;
        let len = usize::try_from(len).or_else(|_| self.fail("an argument length overflows"))?;
        self.take(len).map(|_| ())
    }

    /// Pushes a new object (its parts were counted when they were pushed).
    fn push(&mut self, shape: Shape) -> Result<(), String> {
        self.check(shape, 1)?;
        self.objects.push(shape);
        self.stack.push(Entry::Value(self.objects.len() - 1));
        Ok(())
    }

    /// Pushes another reference to an existing object (a memo read or a DUP): the reader copies
    /// it, so it counts again.
    fn push_ref(&mut self, id: usize) -> Result<(), String> {
        let shape = self.objects[id];
        self.check(shape, shape.objects)?;
        self.stack.push(Entry::Value(id));
        Ok(())
    }

    /// Counts `new_objects` more materialised objects and checks the limits for `shape`.
    fn check(&mut self, shape: Shape, new_objects: u64) -> Result<(), String> {
        if shape.depth > MAX_DEPTH {
            return self.fail(format!(
                "objects nest deeper than {MAX_DEPTH} levels: not a checkpoint recblocks reads"
            ));
        }
        self.materialised = self.materialised.saturating_add(new_objects);
        if self.materialised > self.limit {
            return self.fail(format!(
                "the pickle would expand to more than {} objects ({} per byte of its {} bytes \
                 plus {MAX_EXTRA_OBJECTS}, at most {MAX_OBJECTS}): its shared references \
                 multiply objects, as a hostile file does",
                self.limit,
                OBJECTS_PER_BYTE,
                self.bytes.len()
            ));
        }
        Ok(())
    }

    fn pop(&mut self) -> Result<Shape, String> {
        match self.stack.pop() {
            Some(Entry::Value(id)) => Ok(self.objects[id]),
            Some(Entry::Mark) => self.fail("an opcode takes a value where a mark is"),
            None => self.fail("an opcode takes a value from an empty stack"),
        }
    }

    /// The values above the topmost mark, merged, with the mark removed.
    fn pop_to_mark(&mut self) -> Result<Shape, String> {
        let mut merged = Shape {
            objects: 0,
            depth: 0,
        };
        loop {
            match self.stack.pop() {
                Some(Entry::Value(id)) => merged = add(merged, self.objects[id]),
                Some(Entry::Mark) => return Ok(merged),
                None => return self.fail("an opcode needs a mark and there is none"),
            }
        }
    }

    /// Adds `child` to the container on top of the stack, in place.
    fn extend_top(&mut self, child: Shape) -> Result<(), String> {
        let Some(&Entry::Value(id)) = self.stack.last() else {
            return self.fail("an opcode adds to a container and there is none");
        };
        let grown = contain(self.objects[id], child);
        self.check(grown, 0)?;
        self.objects[id] = grown;
        Ok(())
    }

    fn global(&mut self, name: String) -> Result<(), String> {
        if !ALLOWED_GLOBALS.contains(&name.as_str()) {
            return self.fail(format!(
                "the pickle references the Python global `{name}`, which a RecTools checkpoint \
                 does not use; refused (recblocks never runs pickled code, but a file that names \
                 it is not a checkpoint to trust)"
            ));
        }
        self.push(LEAF)
    }

    fn run(&mut self) -> Result<(), String> {
        while self.pos < self.bytes.len() {
            let op = self.bytes[self.pos];
            self.pos += 1;
            match op {
                b'.' => return Ok(()),
                b'(' => self.stack.push(Entry::Mark),
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_to_mark()?;
                }
                b'2' => match self.stack.last() {
                    Some(&Entry::Value(id)) => self.push_ref(id)?,
                    _ => return self.fail("DUP without a value on the stack"),
                },
                // Scalars with a text, fixed or counted argument.
                b'F' | b'I' | b'L' | b'S' | b'V' => {
                    self.line()?;
                    self.push(LEAF)?;
                }
                b'J' => self.fixed_leaf(4)?,
                b'K' => self.fixed_leaf(1)?,
                b'M' => self.fixed_leaf(2)?,
                b'G' => self.fixed_leaf(8)?,
                b'N' | 0x88 | 0x89 => self.push(LEAF)?,
                b'T' | b'X' | b'B' => {
                    self.counted(4)?;
                    self.push(LEAF)?;
                }
                b'U' | b'C' => {
                    self.counted(1)?;
                    self.push(LEAF)?;
                }
                // LONG1: the reader handles at most 8 bytes.
                0x8a => {
                    let len = self.uint(1)?;
                    if len > 8 {
                        return self.fail(format!(
                            "a LONG1 integer of {len} bytes (the reader takes at most 8)"
                        ));
                    }
                    self.take(len as usize)?;
                    self.push(LEAF)?;
                }
                0x8b => {
                    self.counted(4)?;
                    self.push(LEAF)?;
                }
                // Persistent ids: a tensor's storage.
                b'P' => {
                    self.line()?;
                    self.push(LEAF)?;
                }
                b'Q' => {
                    let id = self.pop()?;
                    self.push(contain(LEAF, id))?;
                }
                // Empty containers.
                b']' | b'}' | b')' => self.push(LEAF)?,
                // Containers built from the values above a mark.
                b'l' | b't' | b'd' => {
                    let items = self.pop_to_mark()?;
                    self.push(contain(LEAF, items))?;
                }
                b'a' => {
                    let item = self.pop()?;
                    self.extend_top(item)?;
                }
                b's' => {
                    let value = self.pop()?;
                    let key = self.pop()?;
                    self.extend_top(add(key, value))?;
                }
                b'e' | b'u' => {
                    let items = self.pop_to_mark()?;
                    self.extend_top(items)?;
                }
                0x85 => {
                    let a = self.pop()?;
                    self.push(contain(LEAF, a))?;
                }
                0x86 => {
                    let b = self.pop()?;
                    let a = self.pop()?;
                    self.push(contain(LEAF, add(a, b)))?;
                }
                0x87 => {
                    let c = self.pop()?;
                    let b = self.pop()?;
                    let a = self.pop()?;
                    self.push(contain(LEAF, add(add(a, b), c)))?;
                }
                // Calls (never made by recblocks; their parts count).
                b'R' | 0x81 => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    self.push(contain(LEAF, add(callable, args)))?;
                }
                // The reader wraps the object with its state in a new object (one level deeper).
                b'b' => {
                    let state = self.pop()?;
                    let object = self.pop()?;
                    self.push(contain(LEAF, add(object, state)))?;
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.global(format!("{module}.{name}"))?;
                }
                b'i' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.pop_to_mark()?;
                    self.global(format!("{module}.{name}"))?;
                }
                b'o' => {
                    let items = self.pop_to_mark()?;
                    self.push(contain(LEAF, items))?;
                }
                // The memo: PUT stores what a later GET copies.
                b'p' => {
                    let index = self.line()?;
                    let index = index
                        .trim()
                        .parse::<u64>()
                        .or_else(|_| self.fail("a bad memo index"))?;
                    self.memo_put(index)?;
                }
                b'q' => {
                    let index = self.uint(1)?;
                    self.memo_put(index)?;
                }
                b'r' => {
                    let index = self.uint(4)?;
                    self.memo_put(index)?;
                }
                b'g' => {
                    let index = self.line()?;
                    let index = index
                        .trim()
                        .parse::<u64>()
                        .or_else(|_| self.fail("a bad memo index"))?;
                    self.memo_get(index)?;
                }
                b'h' => {
                    let index = self.uint(1)?;
                    self.memo_get(index)?;
                }
                b'j' => {
                    let index = self.uint(4)?;
                    self.memo_get(index)?;
                }
                0x80 => {
                    let protocol = self.uint(1)?;
                    if protocol > 3 {
                        return self.fail(format!(
                            "pickle protocol {protocol} is not supported (torch.save writes \
                             protocol 2 unless told otherwise): save the checkpoint with \
                             torch.save's default protocol"
                        ));
                    }
                }
                0x82..=0x84 => {
                    return self.fail("pickle extension codes (EXT1/2/4) are not supported")
                }
                other => {
                    return self.fail(format!(
                        "opcode 0x{other:02x} is not one that protocol 2 writes"
                    ))
                }
            }
        }
        self.fail("the pickle ends without a STOP opcode")
    }

    fn fixed_leaf(&mut self, n: usize) -> Result<(), String> {
        self.take(n)?;
        self.push(LEAF)
    }

    fn memo_put(&mut self, index: u64) -> Result<(), String> {
        match self.stack.last() {
            Some(&Entry::Value(id)) => {
                // The reader stores a copy of the object in the memo.
                let shape = self.objects[id];
                self.check(shape, shape.objects)?;
                self.memo.insert(index, id);
                Ok(())
            }
            _ => self.fail("a memo store without a value on the stack"),
        }
    }

    fn memo_get(&mut self, index: u64) -> Result<(), String> {
        match self.memo.get(&index) {
            Some(&id) => self.push_ref(id),
            None => self.fail(format!("memo entry {index} is read before it is stored")),
        }
    }
}

/// Two shapes side by side.
fn add(a: Shape, b: Shape) -> Shape {
    Shape {
        objects: a.objects.saturating_add(b.objects),
        depth: a.depth.max(b.depth),
    }
}

/// `child` placed inside `container`.
fn contain(container: Shape, child: Shape) -> Shape {
    Shape {
        objects: container.objects.saturating_add(child.objects),
        depth: container.depth.max(child.depth.saturating_add(1)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// `[1, 2]` memoised, then `levels` times `x = [x, x]` (each level doubles the expansion).
    fn doubling(levels: usize) -> Vec<u8> {
        let mut p = vec![0x80, 2, b']', b'q', 0, b'K', 1, b'a', b'K', 2, b'a'];
        for level in 1..=levels {
            // [memo[level-1], memo[level-1]], stored as memo[level].
            p.extend([
                b']',
                b'h',
                (level - 1) as u8,
                b'a',
                b'h',
                (level - 1) as u8,
                b'a',
            ]);
            p.extend([b'q', level as u8]);
        }
        p.push(b'.');
        p
    }

    #[test]
    fn a_small_pickle_passes_and_memo_expansion_is_refused() {
        assert!(check_pickle(&doubling(3)).is_ok());
        let bomb = doubling(40);
        assert!(bomb.len() < 400);
        let err = check_pickle(&bomb).unwrap_err();
        assert!(err.contains("would expand to more than"), "{err}");
    }

    #[test]
    fn deep_nesting_is_refused() {
        // 200,000 nested lists: EMPTY_LIST pushed n times, then APPEND n - 1 times.
        let n = 200_000;
        let mut p = vec![0x80, 2];
        p.extend(std::iter::repeat_n(b']', n));
        p.extend(std::iter::repeat_n(b'a', n - 1));
        p.push(b'.');
        let err = check_pickle(&p).unwrap_err();
        assert!(err.contains("nest deeper than 1000 levels"), "{err}");
    }

    #[test]
    fn build_chains_count_as_nesting_and_memo_stores_as_copies() {
        // `]` then 2,000 × (None, BUILD): each BUILD wraps the object one level deeper.
        let mut p = vec![0x80, 2, b']'];
        for _ in 0..2_000 {
            p.extend([b'N', b'b']);
        }
        p.push(b'.');
        let err = check_pickle(&p).unwrap_err();
        assert!(err.contains("nest deeper"), "{err}");
        // A big memoised object stored again and again: every store copies it.
        let mut p = doubling(20);
        p.pop();
        for _ in 0..100 {
            p.extend([b'r', 0, 1, 0, 0]);
        }
        p.push(b'.');
        let err = check_pickle(&p).unwrap_err();
        assert!(err.contains("would expand to more than"), "{err}");
        // LONG1 longer than 8 bytes.
        let err = check_pickle(&[0x80, 2, 0x8a, 9, 1, 2, 3, 4, 5, 6, 7, 8, 9, b'.']).unwrap_err();
        assert!(err.contains("LONG1"), "{err}");
    }

    #[test]
    fn a_global_outside_the_allow_list_is_refused_by_name() {
        let mut p = vec![0x80, 2];
        p.extend(b"cos\nsystem\n");
        p.extend([b'X', 2, 0, 0, 0]);
        p.extend(b"ls");
        p.extend([0x85, b'R', b'.']);
        let err = check_pickle(&p).unwrap_err();
        assert!(err.contains("`os.system`"), "{err}");
        let mut ok = vec![0x80, 2];
        ok.extend(b"ccollections\nOrderedDict\n");
        ok.extend([b')', b'R', b'.']);
        assert!(check_pickle(&ok).is_ok());
    }

    #[test]
    fn newer_protocols_and_truncated_files_are_refused_clearly() {
        let err = check_pickle(&[0x80, 4, 0x95, 0, 0, 0, 0, 0, 0, 0, 0, b'.']).unwrap_err();
        assert!(err.contains("pickle protocol 4 is not supported"), "{err}");
        let err = check_pickle(&[0x80, 2, b'X', 10, 0, 0, 0, b'a']).unwrap_err();
        assert!(err.contains("ends inside"), "{err}");
        let err = check_pickle(&[0x80, 2, b'N']).unwrap_err();
        assert!(err.contains("without a STOP"), "{err}");
    }
}
