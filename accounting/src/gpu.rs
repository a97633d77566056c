//! GPU use per process, through NVIDIA's management library (NVML), loaded
//! at run time by nvml-wrapper: no build-time dependency on CUDA or the
//! driver. The NVML calls sit behind [`GpuSource`], so tests use a fake.
//!
//! Failure is a state, not an error: no library, no device, or a driver
//! error makes the GPU `not available (<reason>)`, logged once; the source
//! is then dropped and not tried again (no retry storm against a broken
//! driver; a daemon restart tries again).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// One process's use of one device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpuProcess {
    pub pid: u32,
    /// Bytes of device memory it holds (None: the driver does not say).
    pub used_memory: Option<u64>,
    /// Highest SM utilisation sample since the last call, %.
    pub sm_util: Option<u32>,
}

/// One device as a [`GpuSource`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceSample {
    pub index: u32,
    pub name: String,
    pub memory_used: u64,
    pub memory_total: u64,
    pub processes: Vec<GpuProcess>,
}

/// The calls the sampler makes; NVML in production, a fake in tests.
pub trait GpuSource: Send {
    /// Every device with its processes. Err: the driver failed (the reason).
    fn devices(&mut self) -> Result<Vec<DeviceSample>, String>;
}

/// A device in `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuDevice {
    pub index: u32,
    pub name: String,
    pub memory_used_bytes: u64,
    pub memory_total_bytes: u64,
    /// Processes on it (all, not only agents').
    pub processes: usize,
}

/// Whether GPU figures are available, and why not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum GpuStatus {
    Available { devices: Vec<GpuDevice> },
    NotAvailable { reason: String },
}

impl Default for GpuStatus {
    fn default() -> Self {
        GpuStatus::NotAvailable {
            reason: "not sampled".into(),
        }
    }
}

impl std::fmt::Display for GpuStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GpuStatus::Available { devices } => {
                write!(f, "{} device(s)", devices.len())?;
                for d in devices {
                    write!(
                        f,
                        "; {} {}: {}/{} MiB",
                        d.index,
                        d.name,
                        d.memory_used_bytes >> 20,
                        d.memory_total_bytes >> 20
                    )?;
                }
                Ok(())
            }
            GpuStatus::NotAvailable { reason } => write!(f, "not available ({reason})"),
        }
    }
}

/// Per-pid GPU use summed over devices.
pub type PerPid = HashMap<u32, (Option<u64>, Option<u32>)>;

/// The GPU side of the sampler.
pub struct Gpu {
    source: Option<Box<dyn GpuSource>>,
    status: GpuStatus,
}

impl Gpu {
    /// Load NVML and look at the devices once. Never fails: without NVML,
    /// a device or a working driver, the status says why.
    pub fn nvml() -> Gpu {
        match nvml::NvmlSource::open() {
            Ok(s) => Gpu::with_source(Box::new(s)),
            Err(reason) => Gpu::unavailable(reason),
        }
    }

    /// Off by configuration or for any other reason given.
    pub fn unavailable(reason: impl Into<String>) -> Gpu {
        let reason = reason.into();
        log::info!("gpu: not available ({reason})");
        Gpu {
            source: None,
            status: GpuStatus::NotAvailable { reason },
        }
    }

    pub fn with_source(source: Box<dyn GpuSource>) -> Gpu {
        let mut g = Gpu {
            source: Some(source),
            status: GpuStatus::default(),
        };
        g.sample();
        if let GpuStatus::Available { devices } = &g.status {
            log::info!("gpu: NVML, {} device(s)", devices.len());
        }
        g
    }

    pub fn status(&self) -> &GpuStatus {
        &self.status
    }

    pub fn available(&self) -> bool {
        self.source.is_some()
    }

    /// Per-pid memory and utilisation, summed (memory) or maxed (SM %)
    /// over devices. Empty when unavailable.
    pub fn sample(&mut self) -> PerPid {
        let mut out = PerPid::new();
        let Some(src) = self.source.as_mut() else {
            return out;
        };
        let devices = match src.devices() {
            Ok(d) if d.is_empty() => Err("no NVIDIA device".to_string()),
            r => r,
        };
        match devices {
            Ok(devs) => {
                for d in &devs {
                    for p in &d.processes {
                        let e = out.entry(p.pid).or_insert((None, None));
                        if let Some(m) = p.used_memory {
                            e.0 = Some(e.0.unwrap_or(0) + m);
                        }
                        if let Some(u) = p.sm_util {
                            e.1 = Some(e.1.unwrap_or(0).max(u));
                        }
                    }
                }
                self.status = GpuStatus::Available {
                    devices: devs
                        .iter()
                        .map(|d| GpuDevice {
                            index: d.index,
                            name: d.name.clone(),
                            memory_used_bytes: d.memory_used,
                            memory_total_bytes: d.memory_total,
                            processes: d.processes.len(),
                        })
                        .collect(),
                };
            }
            Err(reason) => {
                log::warn!("gpu: not available ({reason}); not retried until a restart");
                self.source = None;
                self.status = GpuStatus::NotAvailable { reason };
            }
        }
        out
    }
}

mod nvml {
    use super::{DeviceSample, GpuProcess, GpuSource};
    use nvml_wrapper::enums::device::UsedGpuMemory;
    use nvml_wrapper::error::NvmlError;
    use nvml_wrapper::Nvml;
    use std::collections::HashMap;

    pub struct NvmlSource {
        nvml: Nvml,
        /// Per device, the newest utilisation sample seen (NVML µs stamp).
        last_seen: HashMap<u32, u64>,
    }

    fn reason(what: &str, e: NvmlError) -> String {
        match e {
            NvmlError::LibloadingError(e) => format!("cannot load libnvidia-ml.so.1: {e}"),
            NvmlError::DriverNotLoaded => "the NVIDIA driver is not loaded".into(),
            e => format!("{what}: {e}"),
        }
    }

    impl NvmlSource {
        pub fn open() -> Result<NvmlSource, String> {
            let nvml = Nvml::init().map_err(|e| reason("nvmlInit", e))?;
            let n = nvml
                .device_count()
                .map_err(|e| reason("nvmlDeviceGetCount", e))?;
            if n == 0 {
                return Err("no NVIDIA device".into());
            }
            Ok(NvmlSource {
                nvml,
                last_seen: HashMap::new(),
            })
        }
    }

    impl GpuSource for NvmlSource {
        fn devices(&mut self) -> Result<Vec<DeviceSample>, String> {
            let n = self
                .nvml
                .device_count()
                .map_err(|e| reason("nvmlDeviceGetCount", e))?;
            let mut out = Vec::with_capacity(n as usize);
            for i in 0..n {
                let d = self
                    .nvml
                    .device_by_index(i)
                    .map_err(|e| reason("nvmlDeviceGetHandleByIndex", e))?;
                let mem = d
                    .memory_info()
                    .map_err(|e| reason("nvmlDeviceGetMemoryInfo", e))?;
                let mut procs: HashMap<u32, GpuProcess> = HashMap::new();
                let compute = d
                    .running_compute_processes()
                    .map_err(|e| reason("nvmlDeviceGetComputeRunningProcesses", e))?;
                // Graphics contexts are optional (NotSupported on compute-only boards).
                let graphics = d.running_graphics_processes().unwrap_or_default();
                for p in compute.into_iter().chain(graphics) {
                    let m = match p.used_gpu_memory {
                        UsedGpuMemory::Used(b) => Some(b),
                        UsedGpuMemory::Unavailable => None,
                    };
                    let e = procs.entry(p.pid).or_insert(GpuProcess {
                        pid: p.pid,
                        used_memory: None,
                        sm_util: None,
                    });
                    if let Some(m) = m {
                        e.used_memory = Some(e.used_memory.unwrap_or(0).max(m));
                    }
                }
                // Utilisation samples since the last call; NotFound means none,
                // NotSupported an older board: memory figures stay.
                let since = self.last_seen.get(&i).copied();
                match d.process_utilization_stats(since) {
                    Ok(samples) => {
                        for s in samples {
                            self.last_seen
                                .insert(i, s.timestamp.max(since.unwrap_or(0)));
                            let e = procs.entry(s.pid).or_insert(GpuProcess {
                                pid: s.pid,
                                used_memory: None,
                                sm_util: None,
                            });
                            e.sm_util = Some(e.sm_util.unwrap_or(0).max(s.sm_util));
                        }
                    }
                    Err(NvmlError::NotFound) | Err(NvmlError::NotSupported) => {}
                    Err(e) => return Err(reason("nvmlDeviceGetProcessUtilization", e)),
                }
                out.push(DeviceSample {
                    index: i,
                    name: d.name().unwrap_or_else(|_| "?".into()),
                    memory_used: mem.used,
                    memory_total: mem.total,
                    processes: procs.into_values().collect(),
                });
            }
            Ok(out)
        }
    }
}

#[cfg(test)]
pub(crate) mod fake {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A GPU whose answers the test sets; counts the calls.
    #[derive(Clone)]
    pub struct FakeGpu {
        pub answer: Arc<Mutex<Result<Vec<DeviceSample>, String>>>,
        pub calls: Arc<Mutex<u32>>,
    }

    impl Default for FakeGpu {
        fn default() -> Self {
            FakeGpu {
                answer: Arc::new(Mutex::new(Ok(Vec::new()))),
                calls: Arc::new(Mutex::new(0)),
            }
        }
    }

    impl GpuSource for FakeGpu {
        fn devices(&mut self) -> Result<Vec<DeviceSample>, String> {
            *self.calls.lock().unwrap() += 1;
            self.answer.lock().unwrap().clone()
        }
    }

    pub fn device(index: u32, procs: &[(u32, u64, Option<u32>)]) -> DeviceSample {
        DeviceSample {
            index,
            name: "Fake H100".into(),
            memory_used: procs.iter().map(|p| p.1).sum(),
            memory_total: 80 << 30,
            processes: procs
                .iter()
                .map(|&(pid, m, u)| GpuProcess {
                    pid,
                    used_memory: Some(m),
                    sm_util: u,
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::*;
    use super::*;

    #[test]
    fn sums_memory_over_devices_and_maxes_util() {
        let f = FakeGpu::default();
        *f.answer.lock().unwrap() = Ok(vec![
            device(0, &[(10, 1 << 30, Some(40)), (11, 5 << 20, None)]),
            device(1, &[(10, 2 << 30, Some(90))]),
        ]);
        let mut g = Gpu::with_source(Box::new(f.clone()));
        let per = g.sample();
        assert_eq!(per[&10], (Some(3 << 30), Some(90)));
        assert_eq!(per[&11], (Some(5 << 20), None));
        match g.status() {
            GpuStatus::Available { devices } => {
                assert_eq!(devices.len(), 2);
                assert_eq!(devices[0].processes, 2);
            }
            s => panic!("{s:?}"),
        }
    }

    #[test]
    fn driver_error_is_a_state_and_is_not_retried() {
        let f = FakeGpu::default();
        *f.answer.lock().unwrap() = Ok(vec![device(0, &[])]);
        let mut g = Gpu::with_source(Box::new(f.clone()));
        assert!(g.available());
        *f.answer.lock().unwrap() = Err("nvmlDeviceGetMemoryInfo: GPU is lost".into());
        assert!(g.sample().is_empty());
        assert_eq!(
            g.status().to_string(),
            "not available (nvmlDeviceGetMemoryInfo: GPU is lost)"
        );
        let calls = *f.calls.lock().unwrap();
        for _ in 0..100 {
            g.sample();
        }
        assert_eq!(*f.calls.lock().unwrap(), calls, "no retry storm");
        assert!(!g.available());
    }

    #[test]
    fn no_device_is_not_available() {
        let f = FakeGpu::default();
        *f.answer.lock().unwrap() = Ok(vec![]);
        let g = Gpu::with_source(Box::new(f));
        assert_eq!(g.status().to_string(), "not available (no NVIDIA device)");
    }

    /// The real loader on this machine: with no NVML library it says so
    /// (and does not panic or fail). On a GPU machine it finds devices.
    #[test]
    fn real_nvml_loads_or_says_why() {
        let g = Gpu::nvml();
        match g.status() {
            GpuStatus::Available { devices } => assert!(!devices.is_empty()),
            GpuStatus::NotAvailable { reason } => {
                assert!(!reason.is_empty());
                eprintln!("gpu: not available ({reason})");
            }
        }
        let json = serde_json::to_string(g.status()).unwrap();
        assert_eq!(
            serde_json::from_str::<GpuStatus>(&json).unwrap(),
            *g.status()
        );
    }
}
