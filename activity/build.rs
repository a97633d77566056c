fn main() {
    scx_cargo::BpfBuilder::new()
        .unwrap()
        .enable_intf("../bpf/schedmon_intf.h", "schedmon_intf.rs")
        .enable_skel("../bpf/schedmon.bpf.c", "schedmon")
        .build()
        .unwrap();
}
