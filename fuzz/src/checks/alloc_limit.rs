//! A global allocator that refuses any single allocation above [`LIMIT`], so a length read
//! from hostile input that reaches an allocation aborts at once ("memory allocation of N bytes
//! failed") in the fuzz targets and the stable replay alike, instead of depending on
//! overcommit or a sanitizer.

use std::alloc::{GlobalAlloc, Layout, System};

/// The largest allocation the checked code may ask for (libFuzzer runs with the same
/// `-malloc_limit_mb`).
pub const LIMIT: usize = 512 << 20;

pub struct Limited;

// SAFETY: every call is forwarded to the system allocator unchanged, or refused with null,
// which the `GlobalAlloc` contract allows.
unsafe impl GlobalAlloc for Limited {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > LIMIT {
            return std::ptr::null_mut();
        }
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() > LIMIT {
            return std::ptr::null_mut();
        }
        System.alloc_zeroed(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > LIMIT {
            return std::ptr::null_mut();
        }
        System.realloc(ptr, layout, new_size)
    }
}
