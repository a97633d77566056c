fn main() {
    // The BPF object is always built, so that it cannot rot even where no
    // kernel can load it (memcg_bpf_ops is out of tree).
    scx_cargo::BpfBuilder::new()
        .unwrap()
        .enable_intf("../bpf/memcg_priority.h", "memcg_priority_intf.rs")
        .enable_skel("../bpf/memcg_priority.bpf.c", "memcg_priority")
        .build()
        .unwrap();
}
