// Builds bpf/flatcg.bpf.c into a skeleton ($OUT_DIR/flatcg_skel.rs) and
// bindgen's view of bpf/flatcg_intf.h ($OUT_DIR/flatcg_intf.rs); and the
// benchmarks' reference scheduler bpf/schedfloor.bpf.c
// ($OUT_DIR/schedfloor_skel.rs, agentcg-schedfloor).
fn main() {
    scx_cargo::BpfBuilder::new()
        .unwrap()
        .enable_intf("../bpf/flatcg_intf.h", "flatcg_intf.rs")
        .enable_skel("../bpf/flatcg.bpf.c", "flatcg")
        .build()
        .unwrap();
    scx_cargo::BpfBuilder::new()
        .unwrap()
        .enable_skel("../bpf/schedfloor.bpf.c", "schedfloor")
        .build()
        .unwrap();
}
