//! `leak-probe`: checks the promise that every request gets fresh memory.
//!
//! On entry it scans its whole linear memory for markers that an earlier
//! request left (`MARK` + user id + request id); then it writes its own
//! marker across a 4 MiB static buffer (one per 64 KiB, so pages far past
//! any keep-resident prefix are dirtied) and through a 1 MiB heap
//! allocation, and scans again to prove the scanner finds them. It answers
//! `{"found":[...],"after":N}`: the markers seen on entry (must be none)
//! and how many of its own it found after writing (must be many).

wit_bindgen::generate!({ path: "../../../wit", world: "route-handler" });

use exports::gatehouse::plugin::handler::Guest;
use gatehouse::plugin::types::{Action, Caller, Request, RequestInfo, Response};

const STATIC_SIZE: usize = 4 << 20;
const HEAP_SIZE: usize = 1 << 20;
const STRIDE: usize = 64 << 10;

static mut SCRATCH: [u8; STATIC_SIZE] = [0; STATIC_SIZE];

/// The marker's prefix (`MCOARKZ:` read as a little-endian u64), made at
/// run time and kept in a wasm local: a copy in linear memory (a literal in
/// the data segment, an array on the shadow stack) would be found by every
/// scan.
#[inline(never)]
fn prefix() -> u64 {
    core::hint::black_box(0x7b1b_0a13_000e_020c_u64) ^ 0x4141_4141_4141_4141
}

/// Every marker in linear memory (from address 8 to its current end): the
/// text between the prefix and the next `;`.
fn scan(prefix: u64) -> Vec<String> {
    let end = core::arch::wasm32::memory_size(0) * 65536;
    let mut found = Vec::new();
    let mut at = 8;
    while at + 8 <= end {
        // SAFETY: `at..at + 8` lies inside linear memory, all of which is
        // readable (wasm has no unmapped pages below memory.size).
        if unsafe { core::ptr::read_unaligned(at as *const u64) } != prefix {
            at += 1;
            continue;
        }
        let mut text = Vec::new();
        at += 8;
        while at < end && text.len() < 128 {
            // SAFETY: as above, `at < end`.
            let b = unsafe { core::ptr::read_volatile(at as *const u8) };
            if b == b';' {
                break;
            }
            text.push(b);
            at += 1;
        }
        found.push(String::from_utf8_lossy(&text).into_owned());
    }
    found
}

struct LeakProbe;

impl Guest for LeakProbe {
    fn handle(caller: Option<Caller>, info: RequestInfo, _request: Request) -> Action {
        let prefix = prefix();
        // Before anything of this request is written.
        let found = scan(prefix);
        let user = caller.map_or_else(|| "anonymous".to_string(), |c| c.user_id);
        let mut marker = prefix.to_le_bytes().to_vec();
        marker.extend_from_slice(format!("{user}:{};", info.request_id).as_bytes());

        // SAFETY: one call at a time per instance; the scratch is only ours.
        let scratch = unsafe { &mut *core::ptr::addr_of_mut!(SCRATCH) };
        for at in (0..STATIC_SIZE - marker.len()).step_by(STRIDE) {
            scratch[at..at + marker.len()].copy_from_slice(&marker);
        }
        let heap: Vec<u8> = marker.iter().copied().cycle().take(HEAP_SIZE).collect();
        core::hint::black_box((&scratch[..], &heap));

        // Our own: in the static buffer, the heap, and the copies made
        // while building them.
        let after = scan(prefix).iter().filter(|m| m.ends_with(info.request_id.as_str())).count();
        let found: Vec<String> = found.iter().map(|m| format!("\"{}\"", m.replace(['"', '\\'], "?"))).collect();
        Action::Respond(Response {
            status: 200,
            headers: vec![("content-type".into(), "application/json".into())],
            body: format!("{{\"found\":[{}],\"after\":{after}}}", found.join(",")).into_bytes(),
        })
    }
}

export!(LeakProbe);
