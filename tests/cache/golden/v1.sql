-- flashbias cache golden dump (tests/cache/schema_test.cpp writes it)
-- auto_vacuum = 2
CREATE TABLE kernels (
  key               TEXT PRIMARY KEY,   -- kernel_key(): sha256(source, options, nvrtc, arch, templates)
  spec              TEXT NOT NULL,      -- KernelSpec::str()
  arch              TEXT NOT NULL,      -- sm_80, sm_90a
  nvrtc_version     INTEGER NOT NULL,   -- major*1000 + minor*10
  driver_version    INTEGER NOT NULL,   -- driver at compile time, 0 if none
  templates_hash    TEXT NOT NULL,
  options           TEXT NOT NULL,      -- NVRTC options, one per line
  entry             TEXT NOT NULL,
  threads           INTEGER NOT NULL,
  smem_bytes        INTEGER NOT NULL,
  registers         INTEGER NOT NULL,
  spill_store_bytes INTEGER NOT NULL,
  spill_load_bytes  INTEGER NOT NULL,
  stack_bytes       INTEGER NOT NULL,
  compile_ms        REAL NOT NULL,
  cubin             BLOB NOT NULL,
  cubin_bytes       INTEGER NOT NULL,   -- length(cubin), kept so that stats never read blobs
  cubin_sha256      TEXT NOT NULL,      -- checked on every load
  created_at        INTEGER NOT NULL,   -- unix seconds
  last_used_at      INTEGER NOT NULL,
  hits              INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE meta (
  key   TEXT PRIMARY KEY,
  value TEXT NOT NULL
);
CREATE TABLE tuning_candidates (
  run_id     INTEGER NOT NULL REFERENCES tuning_runs (id) ON DELETE CASCADE,
  idx        INTEGER NOT NULL,          -- order tried
  tile       TEXT NOT NULL,             -- TileConfig::str()
  outcome    TEXT NOT NULL CHECK (outcome IN
               ('passed', 'incorrect', 'compile_failed', 'launch_failed', 'not_supported')),
  reason     TEXT NOT NULL,
  median_ms  REAL,
  min_ms     REAL,
  max_ms     REAL,
  repeats    INTEGER NOT NULL,
  compile_ms REAL,
  max_error  REAL,
  PRIMARY KEY (run_id, idx)
);
CREATE TABLE tuning_runs (
  id             INTEGER PRIMARY KEY,
  device         TEXT NOT NULL,         -- DeviceFingerprint::str()
  gpu_name       TEXT NOT NULL,
  sm_count       INTEGER NOT NULL,
  cc_major       INTEGER NOT NULL,
  cc_minor       INTEGER NOT NULL,
  driver_version INTEGER NOT NULL,
  problem_key    TEXT NOT NULL,         -- ProblemKey::str()
  arch           TEXT NOT NULL,
  bucket         TEXT NOT NULL,         -- shape bucket
  strategy       TEXT NOT NULL,
  templates_hash TEXT NOT NULL,
  nvrtc_version  INTEGER NOT NULL,
  winner_tile    TEXT,                  -- NULL when no candidate passed
  winner_ms      REAL,
  tuning_seconds REAL NOT NULL,
  created_at     INTEGER NOT NULL,
  created_by     TEXT NOT NULL
);
CREATE INDEX kernels_by_spec ON kernels (spec, arch, templates_hash);
CREATE INDEX kernels_by_use ON kernels (last_used_at);
CREATE INDEX tuning_runs_lookup ON tuning_runs (device, problem_key, bucket, created_at);
INSERT INTO meta VALUES ('created_at', '1795483084');
INSERT INTO meta VALUES ('created_by', 'flashbias 0.1.0');
INSERT INTO meta VALUES ('format', 'flashbias-cache');
INSERT INTO meta VALUES ('schema_version', '1');
INSERT INTO kernels VALUES ('58ffa59e8d01165b849af0c321ef38ea136878855f9f55ff697f4ff572f463d3', 'fwd_sm_80_f16_d64_r1_none/bm128_bn64_w4_s1', 'sm_80', 12040, 12080, 'tmplhash-1', '--gpu-architecture=sm_80
-std=c++17', 'flashbias_fwd_kernel', 128, 49153, 168, 1, 1, 16, 813.5, X'7f454c46074210d9fb0d3d0ea899ccd96b45674ae8e2aaccd287e8a794debe964942affe5ff9bded96168ce79fc66e8cdbf411d4a606086b5a998340a239331d9119e60b7621655caed1b58bd4b840c9c74fe6d096fbfd12ca820869e2ef0242b85819ef11032eeea048ce2de7a79d1244659883ac88aa84bba9552d12d2954d0bbb3c0cd7f5115767d02e0b35e5b83136f1d6bc1f34121ef6a5b7d055695930f3960c1f1d0d14c3dcdd7251d5cec3a87d8c4dcd091b866a0b7d7bf9233145944fe64323a0bae53a928c8e5e4864efa5cbd9f061586bdfcd071131103649d5ec1741dde8b407c120f99864aed44e8a82fb990b7192163d2aba239370027b415c', 256, '895730c25bd5cadc3207fde9df914075d4fdab2992d79f25db733a3fe6e7c256', 1735689600, 1735689600, 0);
INSERT INTO kernels VALUES ('c802e833324e46ea4ffe2eae8520ad0ceda521c0de974543b71eb18969718043', 'fwd_sm_90a_f16_d64_r2_none/bm128_bn64_w4_s1', 'sm_90a', 12040, 12080, 'tmplhash-1', '--gpu-architecture=sm_90a
-std=c++17', 'flashbias_fwd_kernel', 128, 49154, 168, 2, 2, 16, 814.5, X'7f454c4656acc497c90c8ffc75ab85f2815cb74737c06ebc649077c0ab6172d1c77e8a5164f44bfb2f9e14dece797743e981db870f5204103b150d3a3aec2d3fa63edd293de2921e39e1aa2a16adedbaffbc3821acaf98647e069c613c475552244d53db08b0dcc214aa11f85574ed901bde33b7eff9db691af479d8fa666fc1635c69774cd8293a5c28b915c9c217174ccf3e5751ab968cb58a071ea659ef2b3e811432d0fea709f231b80367d487f61dfe989cba6d44ad4cc10919b1a29429f44ca470b131d1c5a02903d52505c63c3d02913069bfc6615f190b2932a7628c833aafc148911bd26d6f1a54d910008681cb8ff3f1ac3f5a260250e09eb381a79beb172dd3d6d7da5c06a7acafe36ba74e151cc7a9c3888d001890b720c1e38c224614e292f20723f9150f34', 300, '7bf6b8a8fb36a23b9b6904307b2af348b774799bb8b7da2e8ce31872943c961a', 1735689601, 1735689601, 0);
INSERT INTO tuning_runs VALUES (1, 'NVIDIA H100 80GB HBM3|sm132|cc9.0|drv12080', 'NVIDIA H100 80GB HBM3', 132, 9, 0, 12080, 'fwd sm_90a f16 d64 r16 none', 'sm_90a', 'nq<=1024,nk<=1024,bh<=64', 'exhaustive', 'tmplhash-1', 12040, 'bm128_bn64_w4_s1', 0.125, 12.5, 1735689602, 'flashbias 0.1.0');
INSERT INTO tuning_candidates VALUES (1, 0, 'bm128_bn64_w4_s1', 'passed', '', 0.125, 0.12, 0.14000000000000001, 20, 900, 0.001);
INSERT INTO tuning_candidates VALUES (1, 1, 'bm64_bn64_w4_s2', 'incorrect', 'max error 0.5 > tolerance 0.01', 0.050000000000000003, NULL, NULL, 2, 850, 0.5);
INSERT INTO tuning_candidates VALUES (1, 2, 'bm256_bn128_w8_s2', 'not_supported', 'shared memory 262144 B exceeds the 232448 B limit', NULL, NULL, NULL, 0, NULL, NULL);
INSERT INTO tuning_candidates VALUES (1, 3, 'bm128_bn128_w8_s1', 'passed', '', 0.14999999999999999, 0.14899999999999999, 0.16, 20, 950, 0.001);
