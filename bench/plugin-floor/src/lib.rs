//! The floor: a `route-handler` that answers `200 {}` and does nothing else.
//! Built without `std` and with a bump allocator, so what a call costs is
//! wasmtime's share (instantiate, lower the arguments, lift the answer,
//! tear down) and nearly nothing of the plugin's. With `--features imports`
//! it also reads one setting and writes one log line, which gives the
//! component the two shim core instances every real plugin has.

#![no_std]

extern crate alloc;

use alloc::vec;
use core::alloc::{GlobalAlloc, Layout};

wit_bindgen::generate!({ path: "../../wit", world: "route-handler" });

use exports::gatehouse::plugin::handler::Guest;
use gatehouse::plugin::types::{Action, Caller, Request, RequestInfo, Response};

struct Floor;

impl Guest for Floor {
    fn handle(_caller: Option<Caller>, _info: RequestInfo, _request: Request) -> Action {
        #[cfg(feature = "imports")]
        {
            use gatehouse::plugin::{config, log};
            let greeting = config::get("greeting");
            log::write(log::Level::Debug, greeting.as_deref().unwrap_or("hello"));
        }
        Action::Respond(Response {
            status: 200,
            headers: vec![],
            body: b"{}".to_vec(),
        })
    }
}

export!(Floor);

/// An instance lives for one request: allocate by bumping a pointer through
/// the memory the module starts with (growing it if need be), never free.
struct Bump;

static mut NEXT: usize = 0;
static mut END: usize = 0;

unsafe impl GlobalAlloc for Bump {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: one thread per instance; `__heap_base` is where the
        // linker's static data ends and nothing else uses what follows.
        unsafe {
            if END == 0 {
                unsafe extern "C" {
                    static __heap_base: u8;
                }
                NEXT = &raw const __heap_base as usize;
                END = core::arch::wasm32::memory_size(0) << 16;
            }
            let start = (NEXT + layout.align() - 1) & !(layout.align() - 1);
            let end = start + layout.size();
            if end > END {
                let pages = (layout.size() + layout.align()).div_ceil(1 << 16);
                let old = core::arch::wasm32::memory_grow(0, pages);
                if old == usize::MAX {
                    return core::ptr::null_mut();
                }
                if old << 16 != END {
                    NEXT = old << 16;
                }
                END = (old + pages) << 16;
                return self.alloc(layout);
            }
            NEXT = end;
            start as *mut u8
        }
    }

    unsafe fn dealloc(&self, _ptr: *mut u8, _layout: Layout) {}
}

#[global_allocator]
static ALLOC: Bump = Bump;

/// The canonical ABI's allocator (a `std` component gets it from the
/// standard library).
#[unsafe(no_mangle)]
unsafe extern "C" fn cabi_realloc(old: *mut u8, old_len: usize, align: usize, new_len: usize) -> *mut u8 {
    if new_len == 0 {
        return align as *mut u8;
    }
    // SAFETY: the caller passes a valid layout and, when `old_len > 0`, a
    // block of `old_len` bytes this allocator returned.
    unsafe {
        let new = ALLOC.alloc(Layout::from_size_align_unchecked(new_len, align));
        if old_len != 0 && !new.is_null() {
            core::ptr::copy_nonoverlapping(old, new, old_len.min(new_len));
        }
        new
    }
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    core::arch::wasm32::unreachable()
}
