//! The generator of the kernels' typed launchers (`build/launchers.rs`, run by core's build script
//! for the `cuda` feature), on the real kernels and on hand-written signatures. A build without
//! CUDA never runs the build script's generator, so this is what checks, on every machine, that
//! every kernel of `kernels.cu` and `rows.cu` has a launcher and every parameter a Rust type.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../build/launchers.rs"]
#[allow(dead_code)]
mod launchers;

use launchers::{parse_kernels, rust_launchers, ParamKind, KERNEL_SOURCES};

/// The kernels of the build script's sources, and how many lines there begin
/// `extern "C" __global__` (a kernel the parser skipped would be missing from the first).
fn real_kernels() -> (Vec<launchers::Kernel>, usize) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let (mut kernels, mut declared) = (Vec::new(), 0);
    for file in KERNEL_SOURCES {
        let text = std::fs::read_to_string(root.join(file)).unwrap_or_default();
        assert!(!text.is_empty(), "{file} could not be read");
        declared += text
            .lines()
            .filter(|l| l.trim_start().starts_with("extern \"C\" __global__"))
            .count();
        match parse_kernels(&text, file) {
            Ok(k) => kernels.extend(k),
            Err(e) => panic!("{e}"),
        }
    }
    (kernels, declared)
}

#[test]
fn every_kernel_gets_a_launcher_with_every_parameter() {
    let (kernels, declared) = real_kernels();
    assert_eq!(kernels.len(), declared);
    assert!(kernels.len() >= 29, "{} kernels", kernels.len());
    let code = rust_launchers(&kernels);
    for k in &kernels {
        assert!(
            code.contains(&format!("pub(super) struct {}<'a> {{", k.name)),
            "no launcher for {}",
            k.name
        );
        assert!(code.contains(&format!("get_or_load_custom_func(\"{}\"", k.name)));
    }
    // One push per parameter, in order: the layer norm's forward, `(const float *x, const float
    // *w, const float *b, float *y, int rows, int d, float eps)`, by hand.
    let ln = kernels.iter().find(|k| k.name == "rb_layer_norm_fwd");
    let ln = ln.map(|k| {
        k.params
            .iter()
            .map(|p| (p.name.as_str(), p.kind.clone()))
            .collect::<Vec<_>>()
    });
    let input = |t: &str| ParamKind::Input(t.into());
    let value = |t: &str| ParamKind::Value(t.into());
    assert_eq!(
        ln,
        Some(vec![
            ("x", input("f32")),
            ("w", input("f32")),
            ("b", input("f32")),
            ("y", ParamKind::Output("f32".into())),
            ("rows", value("i32")),
            ("d", value("i32")),
            ("eps", value("f32")),
        ])
    );
    let body = code
        .split("impl rb_layer_norm_fwd<'_>")
        .nth(1)
        .and_then(|s| s.split("\n}\n").next())
        .unwrap_or_default();
    let pushes: Vec<&str> = body
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("this.") || l.starts_with("args.arg("))
        .collect();
    assert_eq!(
        pushes,
        [
            "this.x.push_to(&mut args);",
            "this.w.push_to(&mut args);",
            "this.b.push_to(&mut args);",
            "this.y.push_to(&mut args);",
            "args.arg(&this.rows);",
            "args.arg(&this.d);",
            "args.arg(&this.eps);",
        ]
    );
    // The Adam kernel takes its structs by value and by address.
    let adam = kernels.iter().find(|k| k.name == "rb_adam_step");
    let kinds: Option<Vec<ParamKind>> =
        adam.map(|k| k.params.iter().map(|p| p.kind.clone()).collect());
    assert_eq!(
        kinds,
        Some(vec![
            value("super::AdamTable"),
            value("super::AdamCoefficients"),
            input("super::AdamCoefficients"),
            input("f32"),
        ])
    );
}

#[test]
fn c_types_map_to_rust_types_by_constness_and_width() {
    let src =
        "// a kernel\nextern \"C\" __global__ void k(const unsigned long long *__restrict__ a,\n\
               uint32_t *b, /* c: */ float const *c, int n, unsigned int m, unsigned long long q,\n\
               float *const out, const int step) {}\n";
    let kernels = parse_kernels(src, "k.cu").unwrap_or_default();
    assert_eq!(kernels.len(), 1);
    assert_eq!(kernels[0].at, "k.cu:2");
    let got: Vec<(String, ParamKind)> = kernels[0]
        .params
        .iter()
        .map(|p| (p.name.clone(), p.kind.clone()))
        .collect();
    let want = [
        ("a", ParamKind::Input("u64".into())),
        ("b", ParamKind::Output("u32".into())),
        ("c", ParamKind::Input("f32".into())),
        ("n", ParamKind::Value("i32".into())),
        ("m", ParamKind::Value("u32".into())),
        ("q", ParamKind::Value("u64".into())),
        ("out", ParamKind::Output("f32".into())),
        ("step", ParamKind::Value("i32".into())),
    ];
    let want: Vec<(String, ParamKind)> = want
        .iter()
        .map(|(n, k)| (n.to_string(), k.clone()))
        .collect();
    assert_eq!(got, want);
    let code = rust_launchers(&kernels);
    assert!(code.contains("pub(super) a: &'a dyn Input<u64>,"));
    assert!(code.contains("pub(super) b: &'a mut dyn Output<u32>,"));
    assert!(code.contains("pub(super) q: u64,"));
    // A parameter named like a Rust keyword becomes a raw identifier.
    let kw =
        parse_kernels("extern \"C\" __global__ void k2(int type) {}", "k.cu").unwrap_or_default();
    assert!(rust_launchers(&kw).contains("pub(super) r#type: i32,"));
}

#[test]
fn what_has_no_launcher_type_is_refused_with_where_and_why() {
    let cases = [
        (
            "extern \"C\" __global__ void k(double x) {}",
            "k.cu:1: kernel `k`, parameter `double x`: the type `double` has no Rust counterpart",
        ),
        (
            "\n\nextern \"C\" __global__ void k(float **x) {}",
            "k.cu:3: kernel `k`, parameter `float **x`: a pointer to a pointer",
        ),
        (
            "__global__ void k(float *x) {}",
            "k.cu:1: a `__global__` function not declared `extern \"C\"",
        ),
        (
            "extern \"C\" __global__ void k x(float *x) {}",
            "k.cu:1: expected `void name(` after `__global__`, found `void k x(`",
        ),
        (
            "extern \"C\" __global__ float k(float *x) {}",
            "k.cu:1: expected `void` after `__global__`",
        ),
        (
            "extern \"C\" __global__ void k(float *x, int x) {}",
            "k.cu:1: kernel `k`: parameter `x` twice",
        ),
        (
            "extern \"C\" __global__ void k(int n) {}\nextern \"C\" __global__ void k(int n) {}",
            "k.cu:2: kernel `k` defined twice",
        ),
        (
            "extern \"C\" __global__ void k(float x[4]) {}",
            "k.cu:1: kernel `k`: parameters with parentheses, templates or arrays",
        ),
    ];
    for (src, want) in cases {
        match parse_kernels(src, "k.cu") {
            Ok(k) => panic!("accepted {src:?}: {k:?}"),
            Err(e) => assert!(e.starts_with(want), "{src:?}: {e}"),
        }
    }
    // `__global__` inside a comment or a string is not a kernel.
    let quiet = "// __global__ void f(double x)\nconst char *s = \"__global__\";\n";
    assert_eq!(parse_kernels(quiet, "k.cu").map(|k| k.len()), Ok(0));
}
