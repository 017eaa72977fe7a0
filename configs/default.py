"""Defaults shared by every experiment; each `configs/<dataset>_<backbone>.py` overrides them.

The values are the paper's (§5.1, SPEC §3–4): ResNet-18-SR, PGD-AT on CIFAR-10.
"""

import ml_collections
from ml_collections import config_dict


def bool_or_int(default: bool) -> config_dict.FieldReference:
  """A key whose documented values are a bool or an int (`attack.unroll`): typed `object`,
  so that `config.attack.unroll = 4` in Python and `--config.attack.unroll=4` (or `=True`,
  `=false`) on the command line are accepted — the flag's value is read as a Python literal
  — where a plain `True` would type the key bool. `config_validation` checks the values."""
  return config_dict.FieldReference(default, field_type=object)


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()

  # Data (siriib_jax/data, docs/data.md); checked by `validate_dataset_config`.
  config.dataset = ml_collections.ConfigDict()
  # cifar10 | cifar100 | tiny_imagenet | cifar10_sample (embedded, offline) |
  # npz ({data_dir}/train.npz, test.npz) | cifar10_corrupted (evaluation only).
  config.dataset.name = "cifar10"
  # TFDS data directory with the dataset prepared as ArrayRecord ("" = TFDS's default,
  # ~/tensorflow_datasets); for name=npz, the folder with the .npz files.
  config.dataset.data_dir = ""
  # A TFDS dataset (cifar10, cifar100, cifar10_corrupted) not yet prepared under data_dir is
  # downloaded and prepared there by the main command itself when this is True and its
  # download host answers within download_timeout seconds (else the run stops at once,
  # naming the prepare command); False: never download (docs/data.md).
  config.dataset.download = True
  config.dataset.download_timeout = 5.0  # Seconds the network probe waits for an answer.
  config.dataset.image_size = 32  # Must match the dataset: 32 (CIFAR), 64 (Tiny-ImageNet).
  config.dataset.num_classes = 10  # Must match the dataset and config.model.num_classes.
  # Training examples held out (stratified) for best-checkpoint selection; 0 = none.
  config.dataset.validation_size = 1000
  config.dataset.validation_seed = 0  # Fixes which examples are held out.
  # Extra training data (e.g. generated images): an .npz with image (uint8 NHWC) and
  # label; "" = none. Never used for validation or test.
  config.dataset.extra_npz = ""
  # Share of each training batch drawn from extra_npz, in [0, 1); 0 = concatenate
  # extra_npz to the training set (each example equally likely).
  config.dataset.extra_fraction = 0.0
  # For name=cifar10_corrupted: the TFDS corruption type and severity (1-5).
  config.dataset.corruption = "gaussian_noise"
  config.dataset.severity = 5

  config.model = ml_collections.ConfigDict()
  config.model.name = "resnet18"
  config.model.num_classes = 10
  # Scales every backbone channel count (1 = the paper's networks; SiRIIB's c(·) is fixed).
  config.model.width_multiplier = 1.0
  # Per-channel normalisation, applied inside the model (CIFAR-10 training statistics).
  config.model.mean = (0.4914, 0.4822, 0.4465)
  config.model.std = (0.2471, 0.2435, 0.2616)
  config.model.siriib = ml_collections.ConfigDict()
  config.model.siriib.enabled = True
  config.model.siriib.scales = (32, 24, 16, 8)
  config.model.siriib.num_skips = 3
  config.model.siriib.variant = "base"  # base | L | XL: the feature extractor c(·).
  config.model.siriib.orth_channels = 12
  config.model.siriib.fft_eps = 1e-8
  # How W of the SR blocks' y = x · W (3 × orth_channels) keeps orthonormal rows, the
  # isometry of paper §3.2: "exact", by construction (W = polar factor of an unconstrained
  # parameter; R_τ is then ~0 and only logged); "penalty", a free W pulled towards them by
  # λ2 R_τ in the loss (for ablation; docs/model.md says why "exact" is the default).
  # Checkpoints of one mode do not load in the other.
  config.model.siriib.orthogonality = "exact"
  # Where the SR blocks sit (docs/purification.md): "plugin", SiRIIB inside the classifier
  # (x_avg → c(·) → p_i → the backbone's skips; loss L_ori + λ1 (L_svd + L_info) + λ2 R_τ);
  # "purifier", the SR blocks alone (x_avg of all scales, no c(·), no p_i; num_skips and
  # variant unused) beside a plain backbone and connected to nothing: the backbone trains
  # with the strategy's L_ori alone, the SR blocks with λ1 L_svd(x_avg(x_adv), x) + λ2 R_τ
  # on the x_adv of that same step (paper App. C.5, Table 8), each part with its own copy
  # of the optimiser. Checkpoints of one placement do not load in the other.
  config.model.siriib.placement = "plugin"
  # A guard against the collapse of the IB path (the f_i turning into constants; RESULTS.md,
  # docs/model.md "The IB path and its guards"): "none", the paper's form; "affine_free_bn",
  # c(·)'s last BatchNorm without learned scale and shift; "variance", a VICReg hinge on the
  # batch standard deviation of each f_i, loss.variance_weight × max(0, target − std).
  # Checkpoints of "affine_free_bn" do not load in the other two, nor theirs in it.
  config.model.siriib.guard = "none"

  # L = L_ori + λ1 (L_svd + L_info) + λ2 R_τ (paper §4.2).
  config.loss = ml_collections.ConfigDict()
  config.loss.lambda1 = 20.0
  config.loss.lambda2 = 1e-4
  config.loss.svd_eps = 1e-6
  # model.siriib.guard = "variance" only: the hinge's weight and its target standard
  # deviation of each f_i over the batch (feature units; `losses.variance_hinge`).
  config.loss.variance_weight = 1.0
  config.loss.variance_target = 0.05

  # Adversarial training (paper §5.1, SPEC §4).
  config.strategy = "pgd_at"  # pgd_at | trades | awp_pgd_at | awp_trades | te | fgsm_at
  config.trades_beta = 6.0
  config.awp_gamma = 5e-3
  config.te_alpha = 0.9  # Momentum of the per-example prediction ensemble.
  config.te_weight = 300.0
  config.te_rampup_epochs = 0  # Epochs over which the TE weight ramps in; 0 = half of training.
  # The inner maximisation: L∞, ε = 8/255, α = 2/255, 10 steps, random start.
  config.attack = ml_collections.ConfigDict()
  config.attack.eps = 8 / 255
  config.attack.step_size = 2 / 255
  config.attack.steps = 10
  # BatchNorm during the attack: "train" uses the batch's statistics, "eval" the running
  # ones; either way the attack never updates the running statistics.
  config.attack.batch_norm = "train"
  # Loop form of the attack's steps: True unrolls (fastest for convolutions on XLA:CPU),
  # False keeps a rolled fori_loop (faster compile), an int ≥ 1 unrolls that many
  # (--config.attack.unroll=4; a bool-or-int key, see `bool_or_int`).
  config.attack.unroll = bool_or_int(True)

  config.seed = 0
  config.num_epochs = 200
  config.batch_size = 128  # Global batch, split over all devices.
  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.learning_rate = 0.1
  config.optimizer.momentum = 0.9
  config.optimizer.weight_decay = 5e-4
  # The learning rate is multiplied by decay_factor at each of these epochs (non-decreasing;
  # a repeated epoch decays once per repeat, as PyTorch's MultiStepLR). A fractional epoch e
  # decays at step int(e · steps per epoch), rounded down.
  config.optimizer.decay_epochs = (100, 150)
  config.optimizer.decay_factor = 0.1
  # > 0: scale the loss gradient down to this global norm before the decay and momentum.
  # Not in the paper (0: off); it tames the R_τ spikes of SiRIIB (BENCHMARKS.md §3c).
  config.optimizer.clip_global_norm = 0.0
  # bf16 compute in the backbone (the SiRIIB branch stays float32), float32 parameters;
  # for GPU and TPU.
  config.half_precision = False

  # Weight averaging (docs/weight_averaging.md): an exponential moving average of the
  # parameters, updated after every step; validation, the best checkpoint, the final
  # evaluation and --mode=eval / export / paper then use it (BatchNorm statistics: the raw
  # model's). Not in the paper (0: off). DeepMind's adversarial_robustness uses 0.995.
  config.weight_averaging = ml_collections.ConfigDict()
  config.weight_averaging.decay = 0.0  # In [0, 1); 0 = off.
  # Until this step the average is a copy of the parameters, then it starts averaging.
  config.weight_averaging.warmup_steps = 0
  # True: decay min(decay, (1 + t) / (10 + t)), t = steps since warmup_steps (TensorFlow's
  # ExponentialMovingAverage num_updates warm-up); False: decay from the first update.
  config.weight_averaging.dynamic_decay = True

  # Validation (clean and PGD-20 on dataset.validation_size held-out training examples).
  config.eval_every_epochs = 1
  config.eval_pgd_steps = 20
  config.log_every_steps = 50
  config.checkpoint_every_steps = 0  # 0: at the end of each epoch only.
  config.keep_checkpoints = 3  # The last few; the best by validation PGD-20 is kept apart.
  # Stop after this many steps (for tests and smoke runs); -1 = num_epochs.
  config.max_steps = -1

  # Robustness evaluation: --mode=eval / svd_study (siriib_jax/evaluation, docs/evaluation.md;
  # paper §5.1, §5.5). Names: "clean", registry names under L∞ (pgd20, pgd100, cw100,
  # autoattack, apgd-ce, apgd-t, fab-t, square, …), the same prefixed "l2-" under L2, and
  # "adaptive" (PGD on L_CE, L_svd, L_info and their sums, Table 4; SiRIIB models only).
  config.evaluation = ml_collections.ConfigDict()
  config.evaluation.attacks = ("clean", "pgd20", "pgd100", "cw100", "autoattack", "l2-pgd20",
                               "l2-pgd100", "l2-cw100", "adaptive")
  config.evaluation.subset_size = 0  # Test points: a stratified random subset; 0 = all.
  config.evaluation.seed = 0  # Fixes the subset and every attack's randomness.
  config.evaluation.batch_size = 256
  config.evaluation.checkpoint = "best"  # best (validation PGD) | last.
  config.evaluation.linf = ml_collections.ConfigDict({"eps": 8 / 255, "step_size": 2 / 255})
  config.evaluation.l2 = ml_collections.ConfigDict({"eps": 0.5, "step_size": 0.1})
  config.evaluation.restarts = 1  # Random starts of pgd<N> / cw<N> / adaptive.
  config.evaluation.adaptive_steps = 20
  config.evaluation.square_queries = 5000  # Square alone and in AutoAttack (standard: 5000).
  # Step loops of pgd<N> / cw<N> / adaptive: False rolled (fast compile), True unrolled, an
  # int ≥ 1 unrolls that many (a bool-or-int key, see `bool_or_int`).
  config.evaluation.unroll = bool_or_int(False)
  # Per attack, workdir/evaluation/<attack>.npz: x_adv, clean and adversarial predictions,
  # per-point robust flags, labels and indices (docs/evaluation.md, "Saved examples").
  config.evaluation.save_examples = False
  # SiRIIB plug-in models: these accuracies again with each skip feature f_i replaced by
  # its mean over the points (the skip ablation, `evaluation/ib_path.py`); () = skip it.
  config.evaluation.skip_ablation = ("clean", "pgd20")
  # The gradient-masking checklist (siriib_jax/evaluation/checklist.py).
  config.evaluation.checklist = ml_collections.ConfigDict()
  config.evaluation.checklist.large_eps = 64 / 255  # 0 = skip the large-ε run.
  config.evaluation.checklist.large_eps_attack = "pgd20"  # Step ε/4.
  config.evaluation.checklist.max_large_eps_accuracy = 0.01
  config.evaluation.checklist.tolerance = 0.01  # Slack max(tolerance, 1/N) between attacks.
  # SVD swap study (paper §3.1, Fig. 1-2): accuracy on x_adv and on U_adv Σ_clean V_advᵀ.
  config.evaluation.svd_study = ml_collections.ConfigDict()
  config.evaluation.svd_study.attacks = ("pgd20", "pgd100", "cw100", "autoattack")
  config.evaluation.svd_study.grid_attacks = ("pgd20", "autoattack")  # Fig. 2's rows.
  config.evaluation.svd_study.grid_images = 8

  # Final robustness evaluation after training (siriib_jax/evaluate); 0 = skip.
  config.final_eval_size = 0
  config.final_eval_attacks = ("clean", "pgd20", "autoattack")

  # The paper's tables and figures: --mode=paper (siriib_jax/paper.py, docs/paper.md). The
  # workdir's own run is compared with these runs' workdirs (each rebuilt from the
  # config.json its training wrote): baselines, SiRIIB runs of other λ1 / p_i counts /
  # strategies / datasets, a purifier run (model.siriib.placement = "purifier").
  config.paper = ml_collections.ConfigDict()
  config.paper.runs = ()
  config.paper.num_points = 200  # Stratified test points of every table (evaluation.seed).
  # Columns of the accuracy tables (Tables 1, 2, 5, 6; Fig. 5-6), config.evaluation names.
  config.paper.attacks = ("clean", "pgd20", "cw100", "autoattack")
  config.paper.l2_attacks = ("l2-pgd20", "l2-cw100")  # Table 7.
  config.paper.purification_attacks = ("pgd20", "pgd100", "cw100", "autoattack")  # Table 8.
  config.paper.figure_attacks = ("pgd20", "cw100")  # Fig. 9 (the first), Fig. 10 (all).
  config.paper.num_images = 8  # Test images in each picture grid (Fig. 2, 4, 7, 9-11).
  config.paper.tsne_points = 200  # Points of the t-SNE (Fig. 8), ≤ num_points.
  # Table 9: a folder of the CIFAR-10-C release (<corruption>.npy, labels.npy); "" = TFDS
  # cifar10_corrupted in dataset.data_dir (docs/corruptions.md).
  config.paper.corruptions_dir = ""
  config.paper.corruptions = ()  # () = every corruption found (Table 9: its 12 of them).
  config.paper.corruption_points = 100  # Images per corruption and severity (stratified).

  return config
