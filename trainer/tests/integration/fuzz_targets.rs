//! The trainer's parsers of outside input under the fuzz crate's mutation harness (`fuzz`'s
//! targets cover the pipeline's): a run folder's `config.json`, read by `eval`, `export` and
//! `finetune --init`, and what a peer of a multi-node run sends (tensor replies and requests,
//! the orchestrator's request stream). An error is fine; a panic or a wait is a bug.

use std::path::PathBuf;

use burn::tensor::{DType, Tensor, TensorData};
use burn_communication::data_service::{
    encode_tensor_reply, encode_tensor_request, read_tensor_reply, read_tensor_request,
};
use fuzz::mutate::run_cases;
use fuzz::Target;
use trainer::model::vit::VitConfig;
use trainer::train::config::{load_config, Init};
use trainer::CpuBackend;

use crate::{finetune_args, fixture, pretrain_args};

/// Mutants per target (`FUZZ_CASES` overrides), as in the fuzz crate's own tests.
fn cases() -> u64 {
    std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(500)
}

fn fuzz(target: &Target, seeds: Vec<Vec<u8>>) {
    assert!(!seeds.is_empty(), "{}: no seeds", target.name);
    let out = run_cases(target, &seeds, &seeds, cases(), 0x5eed);
    eprintln!(
        "{}: {} executions, {} panics",
        target.name,
        out.executions,
        out.panics.len()
    );
    let report: Vec<String> = out
        .panics
        .iter()
        .take(5)
        .map(|(input, msg)| format!("{msg} on {:?}", String::from_utf8_lossy(input)))
        .collect();
    assert!(
        out.panics.is_empty(),
        "{}: {} inputs panicked:\n{}",
        target.name,
        out.panics.len(),
        report.join("\n")
    );
}

/// A scratch run folder of this process (the harness runs one input at a time).
fn scratch_run() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("splitmask-fuzz-run-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Every reader of a run's `config.json`, as the commands call them.
fn read_run_config(bytes: &[u8]) {
    let run = scratch_run();
    std::fs::write(run.join("config.json"), bytes).unwrap();
    let _ = load_config(&run);
    let _ = Init::read(&run);
}

static RUN_CONFIG: Target = Target {
    name: "run_config",
    about: "a run folder's config.json: pre-training, fine-tuning and timm's",
    seeds: Vec::new,
    run: read_run_config,
    json: true,
    selector: false,
};

/// A peer's reply to a tensor request, built into a tensor as the ring does when it is a
/// tensor of the expected dtype; its values must come back whole.
fn read_peer_tensor(bytes: &[u8]) {
    let _ = read_tensor_request(bytes);
    let Ok(data) = read_tensor_reply(bytes) else { return };
    if data.dtype != DType::F32 {
        return;
    }
    let (sent, elements) = (data.bytes.len(), data.num_elements());
    let flat = TensorData {
        shape: vec![elements].into(),
        ..data
    };
    let back = Tensor::<CpuBackend, 1>::from_data(flat, &Default::default()).into_data();
    assert_eq!(back.bytes.len(), sent);
}

static PEER_TENSOR: Target = Target {
    name: "peer_tensor",
    about: "a peer's tensor reply or tensor request (multi-node data service)",
    seeds: Vec::new,
    run: read_peer_tensor,
    json: false,
    selector: false,
};

/// The orchestrator's request stream: the input cut into messages, each after its length
/// (two bytes, little-endian).
fn frames(mut bytes: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while let [a, b, rest @ ..] = bytes {
        let n = usize::from(u16::from_le_bytes([*a, *b])).min(rest.len());
        out.push(&rest[..n]);
        bytes = &rest[n..];
    }
    out
}

fn framed(messages: &[Vec<u8>]) -> Vec<u8> {
    messages
        .iter()
        .flat_map(|m| (m.len() as u16).to_le_bytes().into_iter().chain(m.iter().copied()))
        .collect()
}

fn replay_orchestrator(bytes: &[u8]) {
    burn_collective::replay_requests(&frames(bytes));
}

static ORCHESTRATOR: Target = Target {
    name: "orchestrator_requests",
    about: "a node's request stream to the multi-node orchestrator (Init, Register, Finish)",
    seeds: Vec::new,
    run: replay_orchestrator,
    json: false,
    selector: false,
};

#[test]
fn run_configs_that_are_hostile_give_errors_not_panics() {
    let Some(f) = fixture() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let mut seeds = Vec::new();
    for method in ["beit", "splitmask", "mae", "dino"] {
        let out = tmp.path().join(method);
        let cfg = pretrain_args(&f.dir, &f.vocab_small, &out, &["--method", method])
            .resolve()
            .unwrap();
        seeds.push(serde_json::to_vec_pretty(&cfg).unwrap());
    }
    let ft = finetune_args(&f.dir, None, &tmp.path().join("ft"), &["--model", "cpu-tiny"])
        .resolve()
        .unwrap();
    seeds.push(serde_json::to_vec_pretty(&ft).unwrap());
    let names: Vec<String> = (0..10).map(|i| format!("class {i}")).collect();
    seeds.push(serde_json::to_vec_pretty(&trainer::export::timm_config(&VitConfig::cpu_tiny(), 10, &names)).unwrap());
    // The seeds themselves are accepted: the harness mutates configs that parse.
    for s in &seeds {
        read_run_config(s);
    }
    fuzz(&RUN_CONFIG, seeds);
    let _ = std::fs::remove_dir_all(scratch_run());
}

#[test]
fn peer_tensors_and_requests_that_are_hostile_give_errors_not_panics() {
    let honest = TensorData::new((0..24).map(|i| i as f32).collect::<Vec<_>>(), [2, 3, 4]);
    assert_eq!(read_tensor_reply(&encode_tensor_reply(honest.clone())).unwrap(), honest);
    // The review's forged tensor: 4 bytes claiming 1,000,000 elements.
    let mut forged = TensorData::new(vec![1.0f32], [1]);
    forged.shape = vec![1000, 1000].into();
    let err = read_tensor_reply(&encode_tensor_reply(forged)).unwrap_err();
    assert!(err.contains("do not match"), "{err}");
    let seeds = vec![
        encode_tensor_reply(honest),
        encode_tensor_reply(TensorData::new(vec![0.5f32; 6], [6])),
        encode_tensor_request(7u64.into()),
    ];
    fuzz(&PEER_TENSOR, seeds);
}

#[test]
fn orchestrator_request_streams_that_are_hostile_give_errors_not_panics() {
    let honest = burn_collective::sample_requests();
    assert_eq!(honest.len(), 3);
    let stream = framed(&honest);
    assert_eq!(
        burn_collective::replay_requests(&frames(&stream)),
        3,
        "an honest node's stream is accepted"
    );
    fuzz(&ORCHESTRATOR, vec![stream]);
}
