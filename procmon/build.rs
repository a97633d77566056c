fn main() {
    scx_cargo::BpfBuilder::new()
        .unwrap()
        .enable_intf("../bpf/procmon_intf.h", "procmon_intf.rs")
        .enable_skel("../bpf/procmon.bpf.c", "procmon")
        .build()
        .unwrap();
}
