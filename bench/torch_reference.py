"""PyTorch eager reference of siriib_jax's CIFAR models and train steps (benchmarks only).

Written from SPEC §1–4 (never from public code): CIFAR ResNet-18 (3×3 stem, no max-pool),
ResNet-18-SR (SiRIIB: 4 SR blocks with rfft2 amplitude modulation, x_avg, c(·), p_i skips
added to the stem conv output, stage 1 and stage 2), `L_svd` with `torch.linalg.svd`,
`L_info`, `R_τ`, and the PGD-10 adversarial-training step (ε = 8/255, α = 2/255, random
start, SGD momentum 0.9, weight decay 5e-4) as well as the plain (clean) step. The step runs
on the model's device (CPU or CUDA), optionally under bf16 autocast with the FFT and SVD in
float32, as siriib_jax's `half_precision`.

Module names follow the Flax parameter tree, so `load_flax_variables` copies a siriib_jax
model's variables into the PyTorch one (NHWC kernels → NCHW) for identical-weight checks,
and the state dict of `build_model(architecture)` is exactly what `main.py --mode=export`
writes (siriib_jax/export.py; checked by bench/export_check.py). Every backbone of
siriib_jax (ResNet-18, PreAct-ResNet-18, WRN-28-10, WRN-34-10, any width multiplier) and
SiRIIB's variants (base, L, XL) are here.

    python bench/torch_reference.py          # parameter counts, and logits vs siriib_jax

torch is a benchmark-only dependency (bench/requirements.txt).
"""

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)


def _bn(channels: int) -> nn.BatchNorm2d:
  return nn.BatchNorm2d(channels, eps=1e-5, momentum=0.1)


def _conv3x3(cin: int, cout: int, stride: int = 1, bias: bool = False) -> nn.Conv2d:
  return nn.Conv2d(cin, cout, 3, stride, 1, bias=bias)


def scaled_widths(widths: Sequence[int], multiplier: float) -> tuple:
  """Channel counts times a width multiplier, rounded, at least 1 each (as siriib_jax)."""
  return tuple(max(1, round(w * multiplier)) for w in widths)


class BasicBlock(nn.Module):
  """conv-BN-ReLU-conv-BN plus a (projected) shortcut, then ReLU."""

  def __init__(self, cin: int, cout: int, stride: int):
    super().__init__()
    self.Conv_0 = _conv3x3(cin, cout, stride)
    self.BatchNorm_0 = _bn(cout)
    self.Conv_1 = _conv3x3(cout, cout)
    self.BatchNorm_1 = _bn(cout)
    self.project = stride != 1 or cin != cout
    if self.project:
      self.shortcut_conv = nn.Conv2d(cin, cout, 1, stride, bias=False)
      self.shortcut_bn = _bn(cout)

  def forward(self, x):
    y = F.relu(self.BatchNorm_0(self.Conv_0(x)))
    y = self.BatchNorm_1(self.Conv_1(y))
    if self.project:
      x = self.shortcut_bn(self.shortcut_conv(x))
    return F.relu(x + y)


class PreActBlock(nn.Module):
  """BN-ReLU-conv-BN-ReLU-conv; the shortcut projects the pre-activated input when the
  shape changes (names as the Flax `PreActBlock`)."""

  def __init__(self, cin: int, cout: int, stride: int):
    super().__init__()
    self.BatchNorm_0 = _bn(cin)
    self.Conv_0 = _conv3x3(cin, cout, stride)
    self.BatchNorm_1 = _bn(cout)
    self.Conv_1 = _conv3x3(cout, cout)
    self.project = stride != 1 or cin != cout
    if self.project:
      self.shortcut_conv = nn.Conv2d(cin, cout, 1, stride, bias=False)

  def forward(self, x):
    a = F.relu(self.BatchNorm_0(x))
    if self.project:
      x = self.shortcut_conv(a)
    y = F.relu(self.BatchNorm_1(self.Conv_0(a)))
    return x + self.Conv_1(y)


class ResNet18(nn.Module):
  """CIFAR ResNet-18 (`preact=True`: PreAct-ResNet-18) on normalised NCHW images;
  `skips[i]` is added to the stem conv output (before its BN), stage 1's and stage 2's
  outputs. Channel counts are (64, 128, 256, 512) × `width_multiplier`."""

  strides = (1, 2, 2, 2)

  def __init__(self, num_classes: int = 10, width_multiplier: float = 1.0,
               preact: bool = False):
    super().__init__()
    self.widths = scaled_widths((64, 128, 256, 512), width_multiplier)
    self.preact = preact
    w = self.widths
    self.skip_targets = ((w[0], 1), (w[0], 1), (w[1], 2))  # (channels, stride)
    self.stem_conv = _conv3x3(3, w[0])
    if not preact:
      self.stem_bn = _bn(w[0])
    block = PreActBlock if preact else BasicBlock
    cin = w[0]
    for s, (width, stride) in enumerate(zip(self.widths, self.strides)):
      for i in range(2):
        setattr(self, f"stage{s + 1}_block{i}", block(cin, width, stride if i == 0 else 1))
        cin = width
    if preact:
      self.final_bn = _bn(cin)
    self.head = nn.Linear(cin, num_classes)

  def forward(self, x, skips: Sequence[torch.Tensor] = ()):
    x = self.stem_conv(x)
    if skips:
      x = x + skips[0]
    if not self.preact:
      x = F.relu(self.stem_bn(x))
    for s in range(4):
      x = getattr(self, f"stage{s + 1}_block1")(getattr(self, f"stage{s + 1}_block0")(x))
      if s < 2 and len(skips) > s + 1:
        x = x + skips[s + 1]
    if self.preact:
      x = F.relu(self.final_bn(x))
    return self.head(x.mean(dim=(2, 3)))


class WideResNet(nn.Module):
  """WRN-depth-k, CIFAR layout: 3×3 stem to 16 channels, three stages of (depth − 4) / 6
  pre-activation blocks of (16k, 32k, 64k) × `width_multiplier` channels (strides 1, 2,
  2), BN-ReLU, pooling, dense. Skip targets: stem (16, 1), stage 1 (16k, 1), stage 2 (32k,
  2)."""

  def __init__(self, depth: int = 28, widen_factor: int = 10, num_classes: int = 10,
               width_multiplier: float = 1.0):
    super().__init__()
    self.widths = scaled_widths((16, 32, 64), widen_factor * width_multiplier)
    self.blocks = (depth - 4) // 6
    self.skip_targets = ((16, 1), (self.widths[0], 1), (self.widths[1], 2))
    self.stem_conv = _conv3x3(3, 16)
    cin = 16
    for s, (width, stride) in enumerate(zip(self.widths, (1, 2, 2))):
      for i in range(self.blocks):
        setattr(self, f"stage{s + 1}_block{i}",
                PreActBlock(cin, width, stride if i == 0 else 1))
        cin = width
    self.final_bn = _bn(cin)
    self.head = nn.Linear(cin, num_classes)

  def forward(self, x, skips: Sequence[torch.Tensor] = ()):
    x = self.stem_conv(x)
    if skips:
      x = x + skips[0]
    for s in range(3):
      for i in range(self.blocks):
        x = getattr(self, f"stage{s + 1}_block{i}")(x)
      if s < 2 and len(skips) > s + 1:
        x = x + skips[s + 1]
    x = F.relu(self.final_bn(x))
    return self.head(x.mean(dim=(2, 3)))


BACKBONES = {
    "resnet18": lambda n, m: ResNet18(n, m, preact=False),
    "preact_resnet18": lambda n, m: ResNet18(n, m, preact=True),
    "wrn28_10": lambda n, m: WideResNet(28, 10, n, m),
    "wrn34_10": lambda n, m: WideResNet(34, 10, n, m),
}


class SRBlock(nn.Module):
  """SR block (SPEC §1): 1×1 conv 3→12 (no bias), amplitude modulation of rfft2 by a 1×1
  conv with bias (phase kept), fuse concat[y, z] 24→3 with a 1×1 conv and BN."""

  def __init__(self, orth_channels: int = 12, eps: float = 1e-8):
    super().__init__()
    self.orthogonal = nn.Conv2d(3, orth_channels, 1, bias=False)
    self.amplitude = nn.Conv2d(orth_channels, orth_channels, 1, bias=True)
    self.fuse = nn.Conv2d(2 * orth_channels, 3, 1, bias=False)
    self.fuse_bn = _bn(3)
    self.eps = eps

  def forward(self, x):
    y = self.orthogonal(x).float()  # cuFFT has no bf16: the FFT runs in float32 under autocast.
    h, w = y.shape[-2:]
    spectrum = torch.fft.rfft2(y, dim=(-2, -1))
    amplitude = torch.sqrt(spectrum.real**2 + spectrum.imag**2 + self.eps**2)
    modulated = self.amplitude(amplitude)
    z = torch.fft.irfft2(spectrum * (modulated / amplitude), s=(h, w), dim=(-2, -1))
    return self.fuse_bn(self.fuse(torch.cat([y, z], dim=1)))


def _resize(x, size: int):
  if x.shape[-1] == size and x.shape[-2] == size:
    return x
  return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                       antialias=False)


class SiRIIB(nn.Module):
  """x_avg (mean of upsampled sigmoid SR outputs over the scales), c(·) and the p_i (3×3
  conv with bias, average-pooled to the target). c(·): `base`, three 3×3 conv-BN-ReLU
  (16, 32, 64) × `width_multiplier`; `L` / `XL`, a 3×3 conv to 16 × `width_multiplier`
  channels, 2 / 4 pre-activation blocks of the stage-1 target's width, BN-ReLU."""

  def __init__(self, targets, scales=(32, 24, 16, 8), num_skips: int = 3,
               variant: str = "base", orth_channels: int = 12, fft_eps: float = 1e-8,
               width_multiplier: float = 1.0):
    super().__init__()
    self.scales = tuple(scales)
    for i in range(len(self.scales)):
      setattr(self, f"sr{i}", SRBlock(orth_channels, fft_eps))
    self.variant = variant
    widths = scaled_widths((16, 32, 64), width_multiplier)
    self.extractor = nn.Module()
    if variant == "base":
      cin = 3
      for i, cout in enumerate(widths):
        setattr(self.extractor, f"conv{i}", _conv3x3(cin, cout))
        setattr(self.extractor, f"bn{i}", _bn(cout))
        cin = cout
    else:
      self.blocks = {"L": 2, "XL": 4}[variant]
      width = targets[1][0]
      self.extractor.conv0 = _conv3x3(3, widths[0])
      cin = widths[0]
      for i in range(self.blocks):
        setattr(self.extractor, f"block{i}", PreActBlock(cin, width, 1))
        cin = width
      self.extractor.final_bn = _bn(cin)
    self.targets = tuple(targets[:num_skips])
    for i, (channels, _) in enumerate(self.targets):
      setattr(self, f"projection{i}", _conv3x3(cin, channels, bias=True))

  def extract(self, h):
    e = self.extractor
    if self.variant == "base":
      for i in range(3):
        h = F.relu(getattr(e, f"bn{i}")(getattr(e, f"conv{i}")(h)))
      return h
    h = e.conv0(h)
    for i in range(self.blocks):
      h = getattr(e, f"block{i}")(h)
    return F.relu(e.final_bn(h))

  def forward(self, x):
    size = x.shape[-1]
    maps = [_resize(torch.sigmoid(getattr(self, f"sr{i}")(_resize(x, s))), size)
            for i, s in enumerate(self.scales)]
    x_avg = sum(maps) / len(maps)
    h = self.extract(x_avg)
    features = []
    for i, (_, stride) in enumerate(self.targets):
      f = getattr(self, f"projection{i}")(h)
      if stride > 1:
        f = F.avg_pool2d(f, stride, stride)
      features.append(f)
    return x_avg, features


class Classifier(nn.Module):
  """Raw images in [0, 1] → (logits, x_avg, features); SiRIIB sees raw pixels,
  the backbone `(x − mean) / std`. Input is NCHW. `Classifier(siriib)` is the paper's
  ResNet-18(-SR); `build_model(architecture)` builds any exported siriib_jax model."""

  def __init__(self, siriib: bool, num_classes: int = 10, backbone: str = "resnet18",
               width_multiplier: float = 1.0, siriib_options: Optional[dict] = None,
               mean=CIFAR10_MEAN, std=CIFAR10_STD):
    super().__init__()
    self.backbone = BACKBONES[backbone](num_classes, width_multiplier)
    self.siriib = None
    if siriib:
      self.siriib = SiRIIB(self.backbone.skip_targets, width_multiplier=width_multiplier,
                           **(siriib_options or {}))
    self.register_buffer("mean", torch.tensor(tuple(mean), dtype=torch.float32).view(1, 3, 1, 1))
    self.register_buffer("std", torch.tensor(tuple(std), dtype=torch.float32).view(1, 3, 1, 1))

  def forward(self, x):
    x_avg, features = None, []
    if self.siriib is not None:
      x_avg, features = self.siriib(x)
    logits = self.backbone((x - self.mean) / self.std, features)
    return logits, x_avg, features


def build_model(architecture: dict) -> Classifier:
  """The `Classifier` of a siriib_jax export's `architecture.json` (siriib_jax/export.py):
  its state-dict names and shapes are those of the exported `model.safetensors`, so
  `model.load_state_dict(safetensors.torch.load_file(path))` loads it (strict)."""
  m = architecture["model"]
  s = m["siriib"]
  options = {"scales": tuple(s["scales"]), "num_skips": s["num_skips"],
             "variant": s["variant"], "orth_channels": s["orth_channels"],
             "fft_eps": s["fft_eps"]}
  return Classifier(bool(s["enabled"]), m["num_classes"], m["name"], m["width_multiplier"],
                    options, m["mean"], m["std"])


class LogitsOnly(nn.Module):
  """Wraps a `Classifier` so that it returns logits only (for AutoAttack)."""

  def __init__(self, model: nn.Module):
    super().__init__()
    self.model = model

  def forward(self, x):
    return self.model(x)[0]


def count_parameters(model: nn.Module) -> int:
  return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------- losses


def mse_per_example(a, b):
  return ((a - b) ** 2).flatten(1).mean(1)


def svd_loss(x_avg, x_clean):
  """(B,) `d(Σ_avg, Σ) + d(U_avg V_avgᵀ, U Vᵀ) + d(x_avg, x_clean)` per image and channel
  (NCHW: the matrices are the H×W of each channel)."""
  x_avg, x_clean = x_avg.float(), x_clean.float()
  u_a, s_a, vh_a = torch.linalg.svd(x_avg, full_matrices=False)
  u_c, s_c, vh_c = torch.linalg.svd(x_clean, full_matrices=False)
  return (mse_per_example(s_a, s_c) + mse_per_example(u_a @ vh_a, u_c @ vh_c) +
          mse_per_example(x_avg, x_clean))


def orthogonality_penalty(model: Classifier):
  total = 0.0
  for name, p in model.named_parameters():
    if name.endswith("orthogonal.weight"):
      w = p.reshape(p.shape[0], -1).t()  # (in=3, out=12), as the Flax kernel.
      total = total + ((w @ w.t() - torch.eye(w.shape[0], device=w.device)) ** 2).sum()
  return total


# ---------------------------------------------------------------------------- steps


def augment(images: torch.Tensor, generator: torch.Generator, padding: int = 4):
  """Random crop after zero padding and horizontal flip; NCHW float in [0, 1]. One gather
  for the whole batch (no per-image loop, which costs a launch per image on a GPU)."""
  b, c, h, w = images.shape
  padded = F.pad(images, (padding,) * 4)
  offsets = torch.randint(0, 2 * padding + 1, (b, 2), generator=generator,
                          device=generator.device)
  flips = torch.rand(b, generator=generator, device=generator.device) < 0.5
  rows = offsets[:, :1] + torch.arange(h, device=images.device)  # (B, H)
  cols = offsets[:, 1:] + torch.arange(w, device=images.device)  # (B, W)
  cols = torch.where(flips[:, None], cols.flip(-1), cols)
  index = (torch.arange(b, device=images.device)[:, None, None, None],
           torch.arange(c, device=images.device)[None, :, None, None],
           rows[:, None, :, None], cols[:, None, None, :])
  return padded[index]


def _set_bn_momentum(model: nn.Module, momentum: Optional[float]):
  for m in model.modules():
    if isinstance(m, nn.BatchNorm2d):
      m.momentum = momentum


def pgd_linf(model: Classifier, x, y, eps=8 / 255, alpha=2 / 255, steps=10,
             generator: Optional[torch.Generator] = None):
  """PGD-k on the cross-entropy from a uniform random start; BatchNorm on batch statistics
  (train mode) without updating the running ones (momentum 0), as siriib_jax's
  `attack.batch_norm='train'`. Only the input gradient is computed."""
  _set_bn_momentum(model, 0.0)
  try:
    delta = (torch.rand(x.shape, generator=generator, device=x.device) * 2 - 1) * eps
    x_adv = (x + delta).clamp(0, 1)
    for _ in range(steps):
      x_adv.requires_grad_(True)
      loss = F.cross_entropy(model(x_adv)[0], y, reduction="sum")
      grad, = torch.autograd.grad(loss, x_adv)
      x_adv = x_adv.detach() + alpha * grad.sign()
      x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1)
  finally:
    _set_bn_momentum(model, 0.1)
  return x_adv.detach()


class TrainStep:
  """One PGD-AT (or plain, `attack_steps=0`) SGD step of a `Classifier`, with SiRIIB's
  `L = CE(x_adv) + λ1 (L_svd + L_info) + λ2 R_τ` when the model has SiRIIB (SiRIIB alone on
  the clean images first, for `f_i(x_clean)`, then the whole model on x_adv, as in
  siriib_jax's `train_step`). It runs on the
  model's device; `bf16` runs the forward passes under bf16 autocast (float32 parameters)."""

  def __init__(self, model: Classifier, attack_steps: int = 10, lambda1: float = 20.0,
               lambda2: float = 1e-4, seed: int = 0, bf16: bool = False):
    self.model = model
    self.device = next(model.parameters()).device
    self.bf16 = bf16
    self.attack_steps = attack_steps
    self.lambda1, self.lambda2 = lambda1, lambda2
    self.optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9,
                                     weight_decay=5e-4)
    self.generator = torch.Generator(device=self.device).manual_seed(seed)

  def __call__(self, images_uint8_nchw: torch.Tensor, labels: torch.Tensor) -> float:
    model = self.model
    model.train()
    with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
      x = augment(images_uint8_nchw.float() / 255.0, self.generator)
      x_adv = x
      if self.attack_steps:
        x_adv = pgd_linf(model, x, labels, steps=self.attack_steps, generator=self.generator)
      self.optimizer.zero_grad(set_to_none=True)
      if model.siriib is not None:
        _, features_clean = model.siriib(x)
        logits, x_avg, features_adv = model(x_adv)
        l_svd = svd_loss(x_avg, x)
        l_info = sum(mse_per_example(a, c) for a, c in zip(features_adv, features_clean))
        loss = (F.cross_entropy(logits, labels) + self.lambda1 * (l_svd + l_info).mean() +
                self.lambda2 * orthogonality_penalty(model))
      else:
        logits, _, _ = model(x_adv)
        loss = F.cross_entropy(logits, labels)
    loss.backward()
    self.optimizer.step()
    return float(loss.detach())


# ---------------------------------------------------------------------------- flax → torch


def _flatten(tree, prefix=()):
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict) or hasattr(v, "items"):
      out.update(_flatten(v, prefix + (k,)))
    else:
      out[prefix + (k,)] = v
  return out


@torch.no_grad()
def load_flax_variables(model: nn.Module, variables) -> None:
  """Copies Flax `{'params', 'batch_stats'}` into `model`, whose module paths match the
  Flax ones (conv kernels HWIO → OIHW, dense (in, out) → (out, in)). Every parameter and
  BatchNorm buffer must be matched exactly once."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  params = _flatten(variables["params"])
  stats = _flatten(variables.get("batch_stats", {}))
  modules = dict(model.named_modules())
  used = set()
  for path, value in params.items():
    module = modules[".".join(path[:-1])]
    value = np.asarray(value, dtype=np.float32)
    name = path[-1]
    if name == "kernel":
      value = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
      target = module.weight
    elif name == "scale":
      target = module.weight
    elif name == "bias":
      target = module.bias
    else:
      raise KeyError(path)
    if tuple(target.shape) != value.shape:
      raise ValueError(f"{path}: {tuple(target.shape)} vs {value.shape}")
    target.copy_(torch.from_numpy(np.array(value, dtype=np.float32)))
    used.add(id(target))
  for path, value in stats.items():
    module = modules[".".join(path[:-1])]
    buffer = {"mean": module.running_mean, "var": module.running_var}[path[-1]]
    buffer.copy_(torch.from_numpy(np.array(value, dtype=np.float32)))
  missing = [n for n, p in model.named_parameters() if id(p) not in used]
  if missing:
    raise ValueError(f"parameters without a Flax value: {missing}")


def _main():
  import sys  # pylint: disable=import-outside-toplevel
  import os  # pylint: disable=import-outside-toplevel
  sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from siriib_jax.configs.default import get_config  # pylint: disable=import-outside-toplevel
  from siriib_jax.models import create_model  # pylint: disable=import-outside-toplevel
  for siriib in (False, True):
    config = get_config()
    config.model.siriib.enabled = siriib
    flax_model = create_model(config.model, 32)
    x = np.random.RandomState(0).rand(8, 32, 32, 3).astype(np.float32)
    variables = flax_model.init(jax.random.PRNGKey(0), x)
    n_flax = sum(v.size for v in jax.tree.leaves(variables["params"]))
    model = Classifier(siriib)
    load_flax_variables(model, variables)
    model.eval()
    with torch.no_grad():
      logits_t = model(torch.from_numpy(x).permute(0, 3, 1, 2))[0].numpy()
    logits_j = np.asarray(flax_model.apply(variables, x).logits)
    print(f"{'ResNet-18-SR' if siriib else 'ResNet-18'}: params torch {count_parameters(model):,}"
          f" flax {n_flax:,}; eval logits max |diff| {np.abs(logits_t - logits_j).max():.2e}")


if __name__ == "__main__":
  _main()
