"""The typed config sections: one dataclass per section, every field with a default, one line of help and an
optional range (`visionlab cfg` prints them all). The shared sections (data, model, optim, train) come first,
then each task family's own. `visionlab.config` assembles them into `Config` and loads YAML and overrides."""
from __future__ import annotations

from dataclasses import dataclass, field


def opt(default, help: str, *, ge=None, gt=None, le=None, lt=None):
    """A config field: its default, one line of help (shown by `visionlab cfg`) and an optional range that every
    loaded value must lie in (ge/gt/le/lt: >=, >, <=, <), so a nonsense value fails before anything runs."""
    bounds = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None}
    meta = {"help": help, "bounds": bounds}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class DataConfig:
    name: str = opt("mnist5k", "dataset: mnist5k (embedded, default), digits, mnist, fashion_mnist, cifar10, cifar100, "
                               "trashnet, neu_det (box crops), folder; domains: pacs, domain_folder; segmentation: "
                               "camvid, coco128_seg, mask_folder; detection: neu_det_boxes, coco128, box_folder")
    root: str = opt("", "data folder; empty -> $VISIONLAB_DATA/<dataset folder>, else ./data/<dataset folder>")
    download: bool = opt(False, "fetch a missing dataset from the internet (only where a network exists)")
    val_fraction: float = opt(0.1, "fraction of train held out for validation when the source has no val split",
                               ge=0, lt=1)
    split: str = opt("8:1:1", "train:val:test ratio for folder datasets without split folders (seeded, stratified)")
    split_seed: int = opt(0, "seed of the split manifest (fixed apart from the training seed, so seeds share a split)")
    image_size: int = opt(0, "resize images to this square size; 0 keeps the native size (folders of mixed sizes: "
                               "the model's input size, else 224)", ge=0)
    pad_square: bool = opt(False, "letterbox non-square images to a square before resizing, instead of stretching")
    box_format: str = opt("", "box_folder labels: voc, coco or yolo; empty = detected from the files")
    box_classes: list = opt([], "box datasets: keep only these classes, in this order (e.g. [person]); boxes of the "
                                "others are dropped and counted in the data report; [] = every class")
    names: str = opt("", "box_folder class names: a YAML with `names:` or a text file with one name a line (needed "
                         "for YOLO labels; VOC/COCO: else the label names, sorted)")
    grayscale: bool = opt(False, "convert images to one channel")
    rotation: float = opt(0.0, "random rotation augmentation, +- degrees (the MNIST seed recipe uses 13)", ge=0)
    crop_padding: int = opt(0, "random crop after zero padding by this many pixels (CIFAR recipe: 4)", ge=0)
    crop_pad_mode: str = opt("zeros", "what data.crop_padding pads with: zeros, or reflect (mirrored border pixels; "
                                      "airbench)")
    hflip: bool = opt(False, "random horizontal flip")
    alternate_flip: bool = opt(False, "with hflip, classification: airbench's alternating flip instead of a coin per "
                                      "step: each training image is flipped by a seeded coin in epoch 0 and the other "
                                      "way in the next, so every two epochs see both mirrors (in-memory data)")
    color_jitter: float = opt(0.0, "random brightness, contrast and saturation factors U(1 - j, 1 + j) per image; "
                                   "0 = off", ge=0, lt=1)
    cutmix: float = opt(0.0, "CutMix beta(alpha) parameter; 0 turns it off", ge=0)
    mixup: float = opt(0.0, "MixUp beta(alpha) parameter; 0 turns it off", ge=0)
    mix_prob: float = opt(1.0, "probability that a batch gets CutMix/MixUp when either is on", ge=0, le=1)
    normalize: bool = opt(True, "subtract the dataset (or pretrained) mean and divide by std")
    in_memory: str = opt("auto", "auto|true|false: decode once into a uint8 cache and augment whole batches")
    cache_dir: str = opt("", "where decoded-dataset caches go; empty -> ~/.cache/visionlab")
    num_workers: int = opt(2, "DataLoader workers for datasets that do not fit in memory", ge=0)
    limit: int = opt(0, "use at most this many images per split (quick experiments); 0 = all", ge=0)
    target_domains: list = opt([], "domain datasets (pacs, domain_folder): the held-out domain(s), the test split, "
                                   "never trained on or used to choose")
    source_domains: list = opt([], "domain datasets: the training domains ([] = all but the targets), each split into "
                                   "train and a data.val_fraction validation hold-out")
    domain_balanced: bool = opt(False, "domain datasets: every training batch holds the same number of images from "
                                       "each source domain")
    labels_per_class: int = opt(0, "few-label protocol: keep the labels of this many (seeded by data.split_seed) "
                                   "training images per class, the rest become the unlabelled stream (task=ssl); "
                                   "val and test stay whole; 0 = all labelled", ge=0)
    labels_total: int = opt(0, "few-label protocol: this many labels in all, spread evenly over the classes (CIFAR-10 "
                               "@ 4000 = 400 per class)", ge=0)
    labeled_indices: str = opt("", "few-label protocol: the labelled images of another run (its labeled_indices.csv "
                                   "or its RUN_DIR), so methods and seeds share the exact split")
    synthetic: str = opt("", "a conditional generative RUN_DIR (task=vae|dcgan|ddpm, same classes) whose samples are "
                             "added to the train split (generative augmentation)")
    synthetic_per_class: int = opt(0, "generated training images per class from data.synthetic", ge=0)
    bootstrap: bool = opt(False, "train on a bootstrap resample of the train split drawn with the run's seed "
                                 "(bagging ensembles)")


@dataclass
class ModelConfig:
    name: str = opt("auto", "architecture name from the model registry (`visionlab cfg` lists them); auto = the "
                            "task's default (classification and ssl mnist_cnn, dg tf_efficientnet_lite0, "
                            "segmentation lraspp_lite0, detection fcos_lite0, vae vae, dcgan dcgan, ddpm "
                            "ddpm_unet)")
    weights: str = opt("", "local file with pretrained weights (safetensors or torch state dict)")
    pretrained: bool = opt(False, "load the architecture's pretrained weights (needs model.weights, or download=true)")
    download: bool = opt(False, "with pretrained=true and no weights file: fetch torchvision/timm weights (network)")
    stem: str = opt("auto", "auto|imagenet|cifar: cifar = 3x3 stride-1 stem, no max-pool (small images; ResNets, "
                            "DRNs, EfficientNets); auto: cifar below 64 px unless pretrained")
    spec: str = opt("", "YAML layer spec for model.name=spec_cnn (see configs/spec_cnn_example.yaml)")
    max_params: float = opt(0.0, "parameter budget: fail before training when the model is larger; 0 = none", ge=0)
    drop_path: float = opt(0.0, "stochastic depth rate for models with residual blocks that support it", ge=0, lt=1)
    input_size: int = opt(0, "resize each batch to this square size before the model (ImageNet backbones: 224); "
                             "0 = the data size", ge=0)
    freeze: str = opt("0", "freeze the backbone from the input side: a fraction of its layers (0, 0.25, 0.5, 1) or "
                           "stages:N")
    output_stride: int = opt(16, "segmentation models: input size / feature size of the backbone (8, 16 or 32; "
                                 "8 = finer masks, about 3x the compute of 16)", ge=8, le=32)
    aux_loss: bool = opt(False, "segmentation models with an auxiliary head (DeepLabV3, FCN): train it too")


@dataclass
class OptimConfig:
    name: str = opt("adam", "optimizer: sgd, adam, adamw, nadam, rmsprop")
    lr: float = opt(1e-3, "peak learning rate", gt=0)
    momentum: float = opt(0.9, "momentum (sgd, rmsprop)", ge=0, lt=1)
    nesterov: bool = opt(False, "Nesterov momentum (sgd)")
    weight_decay: float = opt(0.0, "L2 weight decay (decoupled for adamw)", ge=0)
    betas: list = opt([0.9, 0.999], "Adam-family betas")
    scheduler: str = opt("none", "lr schedule: none, step, multistep, cosine, onecycle, triangle (airbench: linear "
                                 "from 0.2x up to 1x at 23 % of the steps, then down to 0.07x at the end)")
    step_size: int = opt(4, "step: epochs between decays", ge=1)
    gamma: float = opt(0.5, "step/multistep: decay factor", gt=0)
    milestones: list = opt([], "multistep: epochs at which lr is multiplied by gamma")
    warmup_epochs: float = opt(0.0, "linear warmup from 0 over this many epochs (fractional allowed)", ge=0)
    min_lr: float = opt(0.0, "cosine: final learning rate", ge=0)
    backbone_lr_mult: float = opt(1.0, "discriminative learning rates: backbone lr = lr x this, the head gets lr",
                                   ge=0)
    bias_lr_mult: float = opt(1.0, "1-D parameters (biases, norm weights) train at their group's lr x this", gt=0)
    bias_decay: bool = opt(False, "decay 1-D parameters too, at weight_decay / bias_lr_mult (the same decay per step "
                                  "as the weights; airbench); false: they get no weight decay")


@dataclass
class TrainConfig:
    epochs: int = opt(5, "number of passes over the training split (set from train.iterations when that is on)",
                      ge=1)
    iterations: int = opt(0, "count training in optimizer steps instead of epochs: this many in all, evaluated every "
                             "train.eval_every steps (each stream an endless reshuffled pass); 0 = off", ge=0)
    eval_every: int = opt(500, "with train.iterations: steps between evaluations and checkpoints (the engine's "
                               "'epoch')", ge=1)
    batch_size: int = opt(100, "training batch size", ge=1)
    eval_batch_size: int = opt(500, "batch size for validation and test", ge=1)
    device: str = opt("auto", "auto (cuda, mps, cpu), cpu, cuda, cuda:N, mps")
    precision: str = opt("auto", "auto (bf16 autocast on CPU/CUDA where supported), fp32, bf16, fp16 (CUDA)")
    channels_last: bool = opt(True, "channels_last memory format (much faster pooling on CPU)")
    label_smoothing: float = opt(0.0, "cross-entropy label smoothing", ge=0, lt=1)
    tta_flip: bool = opt(False, "classification: evaluate (val and test) on the mean logits of each image and its "
                                "horizontal mirror (test-time augmentation)")
    tta_translate: int = opt(0, "classification: also evaluate copies shifted by this many pixels up-left and "
                                "down-right (reflect padding), weighted as airbench's level-2 TTA: half the unshifted "
                                "view(s), a quarter each shifted one; 0 = off", ge=0)
    grad_clip: float = opt(0.0, "clip gradient norm to this value; 0 = off", ge=0)
    ema_decay: float = opt(0.0, "keep an exponential moving average of weights with this decay; 0 = off", ge=0, lt=1)
    lookahead: bool = opt(False, "airbench94's lookahead instead of an EMA: every 5 steps the weights move to a slow "
                                 "average (its decay rising to 0.95^5 by the end), which evaluation uses")
    early_stop: int = opt(0, "stop after this many epochs without improving the primary metric; 0 = off", ge=0)
    checkpoint_every: int = opt(0, "also save last.* every N optimizer steps (0: at each epoch end only)", ge=0)
    threads: int = opt(0, "torch CPU threads; 0 = all cores", ge=0)
    progress: bool = opt(True, "show a progress bar on stderr")
    tensorboard: bool = opt(True, "write TensorBoard events when tensorboard is installed")
    unfreeze_epochs: list = opt([], "gradual unfreezing: at each listed epoch release one more frozen layer group, "
                                    "from the head backwards")
    progressive_stages: int = opt(0, "progressive resizing: N stages from progressive_min_size up to the full size, "
                                     "augmentation and mixing strength rising with it (EfficientNetV2); 0 = off", ge=0)
    progressive_min_size: int = opt(0, "first-stage image size; 0 = half the full size", ge=0)
    progressive_min_reg: float = opt(0.25, "first-stage fraction of rotation/crop/cutmix/mixup strength", ge=0, le=1)


@dataclass
class SegmentationConfig:
    """The segmentation task's own keys (task=segmentation)."""
    crop_size: list = opt([], "training crop [H, W] after random scaling; [] = the image size")
    scale_min: float = opt(0.5, "random scale range for training images and masks: lower end", gt=0)
    scale_max: float = opt(2.0, "random scale range: upper end (torchvision reference: 0.5-2.0)", gt=0)
    hflip: bool = opt(True, "random horizontal flip of image and mask")
    jitter: float = opt(0.0, "colour jitter strength (brightness, contrast, saturation +- this)", ge=0, lt=1)
    class_weights: list = opt([], "per-class cross-entropy weights; [] = uniform")
    dice: float = opt(0.0, "weight of a soft Dice loss added to the cross-entropy; 0 = off", ge=0)
    aux_weight: float = opt(0.4, "weight of the auxiliary head's loss (with model.aux_loss=true)", ge=0)
    tta_scales: list = opt([1.0], "test-time scales whose softmax outputs are averaged (the seed's multi-scale "
                                  "evaluation: [0.75, 1.0, 1.25])")
    tta_flip: bool = opt(False, "test-time: also average horizontally flipped inputs")
    max_examples: int = opt(8, "worst test images kept for the report's overlay gallery", ge=0)


@dataclass
class FidConfig:
    """How generative runs are scored (task=vae|dcgan|ddpm): Frechet distance and KID on a pinned feature extractor."""
    extractor: str = opt("auto", "auto (lite0 for RGB, classifier for 1-channel data), lite0 (ImageNet EfficientNet-"
                                 "Lite0), classifier[:DATASET] (the seed CNN trained once on DATASET's train split), "
                                 "inception:PATH (the standard FID Inception weights file); scores from different "
                                 "extractors are not comparable")
    samples: int = opt(10_000, "generated images for the test FID/KID (the test split is the reference)", ge=2)
    val_samples: int = opt(1_000, "generated images for the per-epoch validation FID (cheaper, more biased)", ge=2)
    kid_subsets: int = opt(100, "KID: number of random subsets", ge=1)
    kid_subset_size: int = opt(1_000, "KID: images per subset (clipped to the smaller side)", ge=2)
    batch_size: int = opt(250, "generated images per sampling batch", ge=1)


@dataclass
class VAEConfig:
    """task=vae: a convolutional VAE (Kingma & Welling 2014), Bernoulli likelihood on [0, 1] pixels."""
    latent_dim: int = opt(32, "latent dimensions", ge=1)
    width: int = opt(32, "channels of the first encoder conv (doubling per level, up to 8x)", ge=4)
    beta: float = opt(1.0, "weight of the KL term (beta-VAE; 1 = the evidence lower bound)", ge=0)
    kl_warmup_epochs: float = opt(0.0, "ramp the KL weight linearly from 0 to beta over this many epochs", ge=0)
    conditional: bool = opt(False, "condition encoder and decoder on the class label (CVAE: sample a chosen class)")


@dataclass
class DCGANConfig:
    """task=dcgan: DCGAN (Radford et al. 2016); the seed recipe is Adam lr 2e-4, betas (0.5, 0.999)."""
    latent_dim: int = opt(100, "noise dimensions of the generator's input", ge=1)
    width: int = opt(64, "channels of the discriminator's first conv / the generator's last hidden layer", ge=4)
    conditional: bool = opt(False, "class-conditional generator and discriminator (sample a chosen class)")
    real_label: float = opt(1.0, "target for real images (one-sided label smoothing: 0.9)", gt=0, le=1)
    d_lr_mult: float = opt(1.0, "discriminator lr = optim.lr x this (TTUR: two time-scale updates)", gt=0)


@dataclass
class DDPMConfig:
    """task=ddpm: denoising diffusion (Ho et al. 2020), epsilon prediction; DDIM sampling (Song et al. 2021)."""
    width: int = opt(32, "U-Net base channels", ge=8)
    channel_mults: list = opt([1, 2, 2], "U-Net width multiplier per resolution level")
    attention: bool = opt(True, "self-attention at the lowest resolution")
    dropout: float = opt(0.0, "dropout inside the residual blocks", ge=0, lt=1)
    timesteps: int = opt(1000, "diffusion steps T", ge=2)
    schedule: str = opt("linear", "noise schedule: linear (1e-4 to 0.02, Ho et al.) or cosine (Nichol & Dhariwal)")
    min_snr_gamma: float = opt(0.0, "0 = the plain epsilon MSE (Ho et al.); > 0 weights each timestep's loss by "
                                    "min(SNR, gamma) / SNR (Min-SNR-gamma, Hang et al. 2023; 5 there)", ge=0)
    sampler: str = opt("ddim", "ddim (deterministic, sample_steps steps) or ancestral (all T steps)")
    sample_steps: int = opt(50, "DDIM steps used for sampling and FID", ge=1)
    conditional: bool = opt(False, "condition the U-Net on the class label (sample a chosen class)")


@dataclass
class SSLConfig:
    """task=ssl: semi-supervised classification on the few-label protocol (data.labels_per_class / labels_total /
    labeled_indices), counted in train.iterations; the final EMA model is reported (train.ema_decay)."""
    method: str = opt("fixmatch", "supervised (labelled images only, same augmentation and steps), pseudo_label (Lee "
                                  "2013), fixmatch (Sohn et al. 2020), uda (Xie et al. 2020), mpl (Meta Pseudo "
                                  "Labels, Pham et al. 2021: teacher + student, UDA term, student finetune)")
    mu: float = opt(7.0, "unlabelled images per labelled image in a step (FixMatch: 7)", gt=0)
    threshold: float = opt(-1.0, "confidence a pseudo-label needs to count (mask); -1 = the method's own: 0.95 "
                                 "(pseudo_label, fixmatch, mpl), 0.8 (uda)", ge=-1, le=1)
    temperature: float = opt(-1.0, "sharpening of soft targets (uda, mpl's teacher); -1 = 0.4 (uda), 0.7 (mpl)",
                             ge=-1)
    lambda_u: float = opt(1.0, "weight of the unlabelled loss (mpl: of the teacher's UDA term; 8 in its paper)", ge=0)
    unsup_warmup: float = opt(0.0, "ramp lambda_u up linearly over this fraction of train.iterations (pseudo-label, "
                                   "UDA, MPL use one); 0 = constant", ge=0, le=1)
    tsa: str = opt("none", "uda: training-signal annealing of the labelled loss: none, linear, log, exp")
    ra_ops: int = opt(2, "strong augmentation: RandAugment ops per image", ge=0)
    ra_magnitude: str = opt("random", "RandAugment magnitude bin 0-30, or random (a bin per image and op, as FixMatch)")
    cutout: float = opt(0.5, "strong augmentation: Cutout hole side as a fraction of the image side; 0 = off",
                        ge=0, le=1)
    mpl_finetune: float = opt(0.1, "mpl: the last fraction of train.iterations finetunes the student on the labelled "
                                   "images only", ge=0, lt=1)
    mpl_teacher_lr_mult: float = opt(1.0, "mpl: teacher lr = optim.lr x this", gt=0)


@dataclass
class DGConfig:
    """task=dg: domain generalization on a domain dataset (data.name=pacs or domain_folder, data.target_domains held
    out); per-domain metrics on every split; `visionlab dg` runs every leave-one-domain-out split over seeds."""
    method: str = opt("erm", "erm (plain training on the pooled source domains), mixstyle (Zhou et al. 2021), "
                             "domain_head (the seed's joint class + domain heads, weighted domain loss), dann (the "
                             "same head through gradient reversal: domain-adversarial features)")
    mixstyle_p: float = opt(0.5, "mixstyle: probability that a batch is mixed at each chosen layer", ge=0, le=1)
    mixstyle_alpha: float = opt(0.1, "mixstyle: Beta(alpha, alpha) mixing weights", gt=0)
    mixstyle_mix: str = opt("random", "mixstyle partners: random (any image of the batch) or crossdomain (an image of "
                                      "another source domain)")
    mixstyle_layers: list = opt([], "mixstyle: module names to mix after; [] = the first two stages (ResNet layer1, "
                                    "layer2; EfficientNet blocks.1, blocks.2)")
    domain_weight: float = opt(0.1, "domain_head / dann: weight of the domain cross-entropy", ge=0)
    reverse_scale: float = opt(1.0, "dann: gradient reversal scale", ge=0)


@dataclass
class DetectionConfig:
    """task=detection: a torchvision detector on the Lite0 feature pyramid (model.name fcos_lite0, retinanet_lite0,
    fasterrcnn_lite0, ssdlite_lite0), letterboxed S x S inputs (data.image_size)."""
    fpn_channels: int = opt(64, "channels of the feature pyramid and the heads (torchvision's ResNet-50 models: 256)",
                            ge=8)
    head_convs: int = opt(2, "FCOS: 3x3 conv layers in each head tower (torchvision's default 4)", ge=0)
    anchor_sizes: list = opt([], "base box size in pixels per pyramid level (FCOS: the levels' size ranges); [] = "
                                 "the detector's default for 200-640 px inputs (FCOS 8..128, RetinaNet 16..256)")
    aspect_ratios: list = opt([0.5, 1.0, 2.0], "anchor aspect ratios h/w (RetinaNet, Faster R-CNN)")
    hflip: bool = opt(True, "random horizontal flip of image and boxes")
    vflip: bool = opt(False, "random vertical flip (texture and defect images; not for street scenes)")
    scale_min: float = opt(0.75, "scale jitter: lower end of the random zoom (image and boxes, canvas kept)", gt=0)
    scale_max: float = opt(1.25, "scale jitter: upper end", gt=0)
    jitter: float = opt(0.2, "photometric jitter strength (brightness, contrast, saturation +- this)", ge=0, lt=1)
    eval_score_threshold: float = opt(0.01, "score threshold for evaluation (mAP needs the low-score tail)", ge=0,
                                      lt=1)
    score_threshold: float = opt(0.3, "score threshold for display: predict, app, video loop, confusion matrix, "
                                      "gallery", ge=0, lt=1)
    nms_iou: float = opt(0.5, "per-class non-maximum suppression IoU", gt=0, le=1)
    max_detections: int = opt(100, "detections kept per image (COCO: 100)", ge=1)
    max_examples: int = opt(8, "worst test images kept for the report's gallery", ge=0)
