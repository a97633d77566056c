// The activity bench's reference program: bench/bpf/switch_floor.bpf.c
// into $OUT_DIR/switch_floor_skel.rs.
fn main() {
    scx_cargo::BpfBuilder::new()
        .unwrap()
        .enable_skel("bpf/switch_floor.bpf.c", "switch_floor")
        .build()
        .unwrap();
}
