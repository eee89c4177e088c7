//! Typed launchers of the kernels in `kernels.cu` and `rows.cu`: for each kernel a struct named
//! after it (`launch::rb_layer_norm_fwd { x: &x, w: &w, ... }`) whose fields are its parameters,
//! by name and with their Rust types, and whose `launch` pushes them in the kernel's order.
//!
//! core's build script generates the structs from the kernels' signatures (`build/launchers.rs`),
//! so an argument that is missing, extra, misnamed or of another type than the kernel's parameter
//! is a compile error, where cudarc's untyped pushes would pass it to the GPU as it is. What the
//! compiler cannot check stays with each call site's `// SAFETY:` comment: that the buffers hold
//! what the kernel reads and writes under its launch configuration.
//!
//! A `const T *` parameter takes any [`Input`] of `T` (a device buffer, a view of one, or an
//! [`Address`]: a device address held as an integer, or null), a `T *` parameter an [`Output`]
//! of `T`, and a value parameter its Rust type (`int` is `i32`, `unsigned int` `u32`,
//! `unsigned long long` `u64`, `float` `f32`, a struct the `repr(C)` struct of that name in
//! `nn::cuda`).

use std::marker::PhantomData;

use candle_core::{
    cuda_backend::{
        cudarc::driver::{
            CudaSlice, CudaView, CudaViewMut, LaunchArgs, LaunchConfig, PushKernelArg,
        },
        CudaDevice,
    },
    Result,
};

/// What a `const T *` kernel parameter is given: device memory the kernel reads.
pub(super) trait Input<T> {
    /// Pushes the device address onto a launch's arguments.
    fn push_to<'a>(&'a self, args: &mut LaunchArgs<'a>);
}

/// What a `T *` kernel parameter is given: device memory the kernel writes (and may read).
pub(super) trait Output<T> {
    /// Pushes the device address onto a launch's arguments.
    fn push_to<'a>(&'a mut self, args: &mut LaunchArgs<'a>);
}

impl<T> Input<T> for CudaSlice<T> {
    fn push_to<'a>(&'a self, args: &mut LaunchArgs<'a>) {
        args.arg(self);
    }
}

impl<T> Input<T> for CudaView<'_, T> {
    fn push_to<'a>(&'a self, args: &mut LaunchArgs<'a>) {
        args.arg(self);
    }
}

impl<T> Output<T> for CudaSlice<T> {
    fn push_to<'a>(&'a mut self, args: &mut LaunchArgs<'a>) {
        args.arg(self);
    }
}

impl<T> Output<T> for CudaViewMut<'_, T> {
    fn push_to<'a>(&'a mut self, args: &mut LaunchArgs<'a>) {
        args.arg(self);
    }
}

/// The device address of a `T` held as an integer, or null: a captured step's slot (a dropout
/// key, Adam's coefficients, the loss a guard reads), or no buffer where a kernel takes null for
/// "none".
pub(super) struct Address<T> {
    ptr: u64,
    of: PhantomData<fn() -> T>,
}

impl<T> Address<T> {
    /// Null: the kernel reads nothing there.
    pub(super) const NULL: Self = Address {
        ptr: 0,
        of: PhantomData,
    };

    /// The address `ptr` (0 is null).
    pub(super) fn new(ptr: u64) -> Self {
        Address {
            ptr,
            of: PhantomData,
        }
    }
}

impl<T> Input<T> for Address<T> {
    fn push_to<'a>(&'a self, args: &mut LaunchArgs<'a>) {
        args.arg(&self.ptr);
    }
}

include!(concat!(env!("OUT_DIR"), "/recblocks_launchers.rs"));
