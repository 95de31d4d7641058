//! The files `tollgate import` reads, any text at all: `sacct --parsable2` output, OpenCost's
//! allocation JSON and a storage CSV, each under the options the input chooses. None may
//! panic; a file is either read into records or refused with every bad line named (at least
//! one, each with its 1-based number within the file).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_gateway::usage::import::{Import, ImportError, Mapping, opencost, slurm, storage};

fuzz_target!(|data: &[u8]| {
    let Some((&shape, text)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let lines = text.split('\n').count();
    let map = Mapping::parse(&["lab=ml-training"]).unwrap_or_default();
    let slurm_options = slurm::Options {
        cluster: (shape & 1 != 0).then(|| "hpc".to_owned()),
        accounts: map.clone(),
        core_hours: if shape & 2 != 0 {
            slurm::CoreHours::Cpu
        } else {
            slurm::CoreHours::Billing
        },
        node_hours: shape & 4 != 0,
        utc_offset_minutes: i32::from(shape >> 4) * 60 - 420,
    };
    check(slurm::parse(text, &slurm_options), lines);
    let opencost_options = opencost::Options {
        allocation_from: match shape & 24 {
            0 => opencost::AllocationFrom::Namespace,
            8 => opencost::AllocationFrom::Name,
            _ => opencost::AllocationFrom::Label("team".into()),
        },
        map: map.clone(),
        cluster: (shape & 1 != 0).then(|| "k8s".to_owned()),
    };
    check(opencost::parse(text, &opencost_options), lines);
    check(storage::parse(text, &map), lines);
});

fn check(parsed: Result<Import, ImportError>, lines: usize) {
    match parsed {
        Ok(import) => {
            for (line, _) in &import.records {
                assert!(
                    (1..=lines).contains(line),
                    "record from line {line} of {lines}"
                );
            }
        }
        Err(e) => {
            assert!(
                e.total >= 1 && e.total >= e.lines.len(),
                "a refusal with no bad line"
            );
            for bad in &e.lines {
                assert!(
                    !bad.reason.is_empty(),
                    "line {} refused for no reason",
                    bad.line
                );
            }
        }
    }
}
