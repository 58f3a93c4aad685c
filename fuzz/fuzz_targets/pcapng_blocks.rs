//! Fuzzes the recording reader's block layer: any bytes give blocks and at
//! most one error, never a panic, a hang or an allocation beyond one block.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../sockspy/src/output/pcapng.rs"]
#[expect(dead_code, reason = "the writer half is used only by sockspy")]
mod pcapng;

fuzz_target!(|data: &[u8]| {
    let mut errors = 0;
    for block in pcapng::BlockReader::new(data) {
        if block.is_err() {
            errors += 1;
        }
    }
    assert!(errors <= 1, "the reader stops at the first error");
});
