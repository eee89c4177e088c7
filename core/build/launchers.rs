//! Typed Rust launchers for core's CUDA kernels, generated from the kernels' own signatures.
//!
//! cudarc launches a kernel with its arguments pushed one by one (`LaunchArgs::arg`), each as an
//! untyped pointer: nothing checks that they match the kernel's parameters in number, order or
//! type, and a mismatch shows only on a GPU, as wrong values or a fault. This reads every
//! `extern "C" __global__ void name(...)` of a CUDA source and writes, for each kernel, a Rust
//! struct named after it whose fields are its parameters, by name, with the Rust type of each
//! (`nn::cuda::launch`). A launch then spells its arguments as a struct literal: a missing,
//! extra, misnamed or mistyped argument is a compile error, and the order of the pushes comes
//! from the signature.
//!
//! Used by core's build script (for the `cuda` feature), and by `tests/kernel_launchers.rs`,
//! which runs it on the real kernels in every build, with or without CUDA.

/// The CUDA sources whose kernels get launchers (paths relative to core's manifest): every file
/// with `extern "C" __global__` kernels.
pub const KERNEL_SOURCES: [&str; 2] = ["src/nn/cuda/kernels.cu", "src/nn/cuda/rows.cu"];

/// One kernel parameter's Rust side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParamKind {
    /// `const T *`: read by the kernel (`&dyn Input<T>`).
    Input(String),
    /// `T *`: written by the kernel (`&mut dyn Output<T>`).
    Output(String),
    /// `T` by value.
    Value(String),
}

/// A parameter of a kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    /// Its name in the kernel's signature.
    pub name: String,
    /// Its C type as written, normalised (`const float *`).
    pub c_type: String,
    /// What the Rust side passes.
    pub kind: ParamKind,
}

/// A kernel: `extern "C" __global__ void name(params)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kernel {
    pub name: String,
    pub params: Vec<Param>,
    /// Where it is declared: `file:line`.
    pub at: String,
}

/// The source with every comment and string literal's contents turned into spaces (newlines
/// kept, so lines still count), except the `"C"` of `extern "C"`.
fn strip_comments(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < b.len() {
        let Some(rest) = src.get(i..) else {
            // Inside a character (an escape before a multi-byte one): blank its other bytes.
            out.push(' ');
            i += 1;
            continue;
        };
        if rest.starts_with("\"C\"") {
            out.push_str("\"C\"");
            i += 3;
        } else if rest.starts_with('"') {
            // A string literal: its quotes kept, its contents blanked.
            out.push('"');
            i += 1;
            while i < b.len() && b[i] != b'"' && b[i] != b'\n' {
                let skip = if b[i] == b'\\' { 2 } else { 1 };
                for _ in 0..skip.min(b.len() - i) {
                    out.push(' ');
                }
                i += skip;
            }
            if i < b.len() && b[i] == b'"' {
                out.push('"');
                i += 1;
            }
        } else if rest.starts_with("//") {
            while i < b.len() && b[i] != b'\n' {
                out.push(' ');
                i += 1;
            }
        } else if rest.starts_with("/*") {
            let end = src[i + 2..].find("*/").map_or(b.len(), |e| i + 2 + e + 2);
            for &ch in &b[i..end] {
                out.push(if ch == b'\n' { '\n' } else { ' ' });
            }
            i = end;
        } else {
            let ch = rest.chars().next().unwrap_or(' ');
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

/// The Rust type of a C scalar or struct type name, or `None`.
fn rust_type(c: &str) -> Option<String> {
    let t = match c {
        "float" => "f32",
        "int" | "int32_t" => "i32",
        "unsigned int" | "unsigned" | "uint32_t" => "u32",
        "unsigned long long" | "unsigned long long int" | "uint64_t" => "u64",
        // A struct the Rust side defines in `nn::cuda` with the same layout (`repr(C)`): a name in
        // CamelCase.
        s if s.starts_with(|c: char| c.is_ascii_uppercase())
            && s.chars().all(|c| c.is_ascii_alphanumeric()) =>
        {
            return Some(format!("super::{s}"));
        }
        _ => return None,
    };
    Some(t.to_string())
}

fn is_ident(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with(|c: char| c.is_ascii_digit())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A parameter from its declaration (`const float *__restrict__ x`).
fn parse_param(decl: &str, kernel: &str, at: &str) -> Result<Param, String> {
    let spaced = decl.replace('*', " * ");
    let tokens: Vec<&str> = spaced
        .split_whitespace()
        .filter(|t| !matches!(*t, "__restrict__" | "__restrict"))
        .collect();
    let fail = |why: &str| {
        Err(format!(
            "{at}: kernel `{kernel}`, parameter `{}`: {why}",
            decl.split_whitespace().collect::<Vec<_>>().join(" ")
        ))
    };
    let Some((&name, ty)) = tokens.split_last() else {
        return fail("empty");
    };
    if !is_ident(name) || ty.is_empty() {
        return fail("expected a type and a name");
    }
    let stars = ty.iter().filter(|t| **t == "*").count();
    if stars > 1 {
        return fail("a pointer to a pointer has no launcher type");
    }
    let star = ty.iter().position(|t| *t == "*");
    // `const` before the `*` makes the pointee read-only; after it (a const pointer) it says
    // nothing about the pointee.
    let before = &ty[..star.unwrap_or(ty.len())];
    let after = star.map_or(&[][..], |s| &ty[s + 1..]);
    if after.iter().any(|t| *t != "const") {
        return fail("unexpected words after the `*`");
    }
    let read_only = before.contains(&"const");
    let base: Vec<&str> = before.iter().copied().filter(|t| *t != "const").collect();
    let base = base.join(" ");
    let Some(rust) = rust_type(&base) else {
        return fail(&format!(
            "the type `{base}` has no Rust counterpart (float, int, unsigned int, unsigned long \
             long, their <stdint.h> names, a CamelCase struct, or a pointer to one of these)"
        ));
    };
    let kind = match (star.is_some(), read_only) {
        (false, _) => ParamKind::Value(rust),
        (true, true) => ParamKind::Input(rust),
        (true, false) => ParamKind::Output(rust),
    };
    let c_type = match &kind {
        ParamKind::Value(_) => base,
        ParamKind::Input(_) => format!("const {base} *"),
        ParamKind::Output(_) => format!("{base} *"),
    };
    Ok(Param {
        name: name.to_string(),
        c_type,
        kind,
    })
}

/// Every kernel of a CUDA source, in order. Each `__global__` must be spelled
/// `extern "C" __global__ void name(...)` (the form cudarc loads by name); anything else, or a
/// parameter type with no Rust counterpart, is an error naming the file and line.
pub fn parse_kernels(source: &str, file: &str) -> Result<Vec<Kernel>, String> {
    let src = strip_comments(source);
    let mut kernels = Vec::new();
    let mut from = 0;
    while let Some(pos) = src[from..].find("__global__").map(|p| p + from) {
        let line = src[..pos].matches('\n').count() + 1;
        let at = format!("{file}:{line}");
        from = pos + "__global__".len();
        let head = src[..pos].trim_end();
        if !head.ends_with("extern \"C\"") {
            return Err(format!(
                "{at}: a `__global__` function not declared `extern \"C\" __global__ void name(...)`"
            ));
        }
        let mut rest = &src[from..];
        // `void`, then an optional `__launch_bounds__(...)`, then the name.
        let Some(after_void) = rest.trim_start().strip_prefix("void") else {
            return Err(format!("{at}: expected `void` after `__global__`"));
        };
        rest = after_void.trim_start();
        if let Some(bounds) = rest.strip_prefix("__launch_bounds__") {
            let Some(end) = bounds.find(')') else {
                return Err(format!("{at}: `__launch_bounds__(` is not closed"));
            };
            rest = &bounds[end + 1..];
        }
        let Some(open) = rest.find('(') else {
            return Err(format!("{at}: a kernel without a parameter list"));
        };
        let name = rest[..open].trim().to_string();
        if !is_ident(&name) {
            return Err(format!(
                "{at}: expected `void name(` after `__global__`, found `void {}(`",
                name
            ));
        }
        let Some(close) = rest[open..].find(')').map(|c| c + open) else {
            return Err(format!(
                "{at}: kernel `{name}`: its parameter list is not closed"
            ));
        };
        let list = &rest[open + 1..close];
        if list.contains('(') || list.contains('<') || list.contains('[') {
            return Err(format!(
                "{at}: kernel `{name}`: parameters with parentheses, templates or arrays have no \
                 launcher type"
            ));
        }
        let params = if list.trim().is_empty() || list.trim() == "void" {
            Vec::new()
        } else {
            list.split(',')
                .map(|p| parse_param(p, &name, &at))
                .collect::<Result<Vec<_>, _>>()?
        };
        let mut seen = std::collections::HashSet::new();
        if let Some(p) = params.iter().find(|p| !seen.insert(p.name.as_str())) {
            return Err(format!(
                "{at}: kernel `{name}`: parameter `{}` twice",
                p.name
            ));
        }
        if kernels.iter().any(|k: &Kernel| k.name == name) {
            return Err(format!("{at}: kernel `{name}` defined twice"));
        }
        kernels.push(Kernel { name, params, at });
        from = src.len() - rest.len() + close;
    }
    Ok(kernels)
}

/// A field name for a parameter: Rust keywords become raw identifiers.
fn field(name: &str) -> String {
    const KEYWORDS: &[&str] = &[
        "as", "async", "await", "box", "break", "const", "continue", "crate", "do", "dyn", "else",
        "enum", "extern", "false", "final", "fn", "for", "gen", "if", "impl", "in", "let", "loop",
        "macro", "match", "mod", "move", "mut", "override", "priv", "pub", "ref", "return",
        "static", "struct", "trait", "true", "try", "type", "typeof", "unsafe", "unsized", "use",
        "virtual", "where", "while", "yield",
    ];
    if KEYWORDS.contains(&name) {
        format!("r#{name}")
    } else {
        name.to_string()
    }
}

/// The launchers of `kernels` as Rust source: for each kernel a struct of its arguments, named
/// after the kernel, with an `unsafe fn launch(self, dev, cfg)`. The code refers to `Input`,
/// `Output`, `launch_error`, `MODULE` and `PTX` of the module it is included into (`Input` and
/// `Output` there, the rest in its parent).
pub fn rust_launchers(kernels: &[Kernel]) -> String {
    let mut s = String::from(
        "// Generated by core/build/launchers.rs from the kernels' signatures: do not edit.\n",
    );
    for k in kernels {
        let sig: Vec<String> = k
            .params
            .iter()
            .map(|p| format!("{}{}", p.c_type, spaced_name(&p.c_type, &p.name)))
            .collect();
        s.push_str(&format!(
            "\n/// The arguments of the kernel `{}` ({}), in its parameters' order, names and \
             types:\n/// `({})`.\n#[allow(non_camel_case_types)]\npub(super) struct {}<'a> {{\n",
            k.name,
            k.at,
            sig.join(", "),
            k.name
        ));
        if k.params.is_empty() {
            s.push_str("    _args: std::marker::PhantomData<&'a ()>,\n");
        }
        for p in &k.params {
            let ty = match &p.kind {
                ParamKind::Input(t) => format!("&'a dyn Input<{t}>"),
                ParamKind::Output(t) => format!("&'a mut dyn Output<{t}>"),
                ParamKind::Value(t) => t.clone(),
            };
            s.push_str(&format!(
                "    /// `{}{}`\n    pub(super) {}: {ty},\n",
                p.c_type,
                spaced_name(&p.c_type, &p.name),
                field(&p.name)
            ));
        }
        s.push_str(&format!(
            "}}\n\nimpl {name}<'_> {{\n    /// Launches `{name}` on `dev`'s stream with `cfg`, its \
             arguments pushed in the kernel's order.\n    ///\n    /// # Safety\n    /// The kernel \
             reads and writes wherever its arguments point, as far as its code and `cfg` take it: \
             the caller makes sure every buffer holds what the kernel touches.\n    \
             pub(super) unsafe fn launch(self, dev: &CudaDevice, cfg: LaunchConfig) -> Result<()> \
             {{\n        #[allow(unused_mut)]\n        let mut this = self;\n        let kernel = \
             dev.get_or_load_custom_func(\"{name}\", super::MODULE, super::PTX)?;\n        \
             #[allow(unused_mut)]\n        let mut args = kernel.builder();\n",
            name = k.name
        ));
        for p in &k.params {
            let f = field(&p.name);
            s.push_str(&match p.kind {
                ParamKind::Input(_) | ParamKind::Output(_) => {
                    format!("        this.{f}.push_to(&mut args);\n")
                }
                ParamKind::Value(_) => format!("        args.arg(&this.{f});\n"),
            });
        }
        s.push_str(&format!(
            "        // SAFETY: the arguments are pushed in the kernel's order with its types (this \
             struct is generated from its signature); the caller answers for what they point \
             at.\n        unsafe {{ args.launch(cfg) }}\n            .map(|_| ())\n            \
             .map_err(|e| super::launch_error(\"{}\", e))\n    }}\n}}\n",
            k.name
        ));
    }
    s
}

/// ` name`, or `name` right after a `*`.
fn spaced_name(c_type: &str, name: &str) -> String {
    if c_type.ends_with('*') {
        name.to_string()
    } else {
        format!(" {name}")
    }
}
