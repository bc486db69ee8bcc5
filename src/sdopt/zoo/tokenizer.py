"""A CLIP tokenizer built locally: real byte-level BPE, small vocabulary.

The zoo may not download anything, so it cannot ship OpenAI's 49408-token
vocabulary. Instead it learns merges over a built-in list of prompt words and
lays the vocabulary out exactly as CLIP does (256 byte symbols, the same with
"</w>", one token per merge, then the two special tokens last). Because the
format is CLIP's, the files load with every CLIP tokenizer class: transformers
4.x's slow ``CLIPTokenizer`` (vocab.json + merges.txt), 4.x's
``CLIPTokenizerFast`` and 5.x's ``CLIPTokenizer`` (tokenizer.json).
"""

from __future__ import annotations

import functools
import json
from collections import Counter
from pathlib import Path

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
MODEL_MAX_LENGTH = 77
END_OF_WORD = "</w>"

# Words typical of image prompts. They are the BPE training set: every word
# here ends up a single token, and other words split into their subwords.
_CORPUS = """
a an the of in on at by with and or for from to into over under near behind
above below between through under inside outside beside across along around
is are was its his her their this that these those very highly ultra extremely

photo photograph photography portrait landscape painting drawing illustration
sketch render rendering artwork concept art poster cover wallpaper scene shot
closeup close up wide angle view aerial macro panorama selfie still frame
oil watercolor acrylic pencil charcoal ink pastel digital vector pixel anime
manga cartoon comic realistic photorealistic hyperrealistic surreal abstract
impressionist expressionist cubist minimalist baroque renaissance gothic
victorian futuristic retro vintage modern ancient medieval steampunk cyberpunk
fantasy science fiction sci fi noir pop

detailed intricate sharp focus masterpiece quality best high resolution
trending award winning professional studio cinematic dramatic epic beautiful
stunning gorgeous elegant cute lovely majestic mysterious magical ethereal
dreamy moody peaceful serene cozy gloomy dark bright vivid vibrant colorful
soft hard smooth rough glossy matte shiny textured symmetrical centered
lighting light lights lit backlit sunlight moonlight candlelight neon glow
glowing shadow shadows volumetric ambient rim golden hour sunset sunrise dusk
dawn night day morning evening noon twilight fog foggy mist misty haze rain
rainy snow snowy storm stormy cloud clouds cloudy sky stars starry

camera lens bokeh depth field exposure long film grain analog kodak canon
nikon sony leica mm wide telephoto fisheye tilt shift unreal engine octane
blender redshift ray tracing hdr uhd resolution render

red orange yellow green blue purple violet pink brown black white gray grey
silver gold golden bronze copper crimson teal turquoise cyan magenta emerald
pastel monochrome sepia

man woman men women boy girl child children person people old young baby
king queen knight warrior wizard witch princess prince soldier astronaut
robot cyborg android alien monster dragon creature god goddess angel demon
face eyes eye hair smile skin hands hand body figure character

cat cats dog dogs horse bird birds fish owl fox wolf lion tiger bear rabbit
deer elephant whale butterfly insect snake frog monkey panda unicorn

tree trees forest jungle flower flowers garden grass field meadow leaf leaves
mountain mountains hill valley river lake sea ocean beach island desert cave
waterfall volcano canyon cliff rock rocks stone sand water fire ice wave
waves

city town village street road bridge castle palace temple church tower house
home building buildings skyscraper room interior kitchen bedroom library
window door wall floor roof market cafe restaurant station train car cars
ship boat plane airplane spaceship planet moon sun earth space galaxy nebula

sitting standing walking running flying floating swimming dancing reading
holding wearing looking smiling playing sleeping fighting riding glowing
burning falling rising made covered filled surrounded

dress suit armor helmet crown hat cloak robe jacket shirt glasses mask sword
shield book books table chair lamp candle mirror clock flag

small large big tiny giant huge little tall short long round square
beautifully perfectly

by artstation deviantart pixiv behance unsplash greg rutkowski artgerm alphonse
mucha van gogh monet da vinci rembrandt picasso dali hokusai ghibli pixar
disney

style styled inspired featured featuring trending
"""


@functools.cache
def bytes_to_unicode() -> dict[int, str]:
    """CLIP's (and GPT-2's) reversible map from bytes to printable characters.

    BPE works on these characters, so no token contains whitespace or control
    characters and merges.txt can separate a pair with a space.
    """
    byte_values = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    code_points = byte_values[:]
    # The rest are shifted past 255; the order matters, it is the order of the
    # first 512 vocabulary ids.
    shifted = 0
    for b in range(256):
        if b not in byte_values:
            byte_values.append(b)
            code_points.append(256 + shifted)
            shifted += 1
    return dict(zip(byte_values, map(chr, code_points)))


def _symbols(word: str) -> tuple[str, ...]:
    """A corpus word as CLIP's BPE first sees it: byte characters, "</w>" on the last."""
    byte_chars = bytes_to_unicode()
    chars = [byte_chars[b] for b in word.encode("utf-8")]
    chars[-1] += END_OF_WORD
    return tuple(chars)


def _merge(symbols: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    """Apply one merge left to right, without overlaps, as CLIP's bpe() does."""
    out, i = [], 0
    while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
            out.append(symbols[i] + symbols[i + 1])
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return tuple(out)


@functools.cache
def learn_merges() -> tuple[tuple[str, str], ...]:
    """Learn BPE merges over the built-in corpus until every corpus word is one token.

    Deterministic: the most frequent pair (counted over distinct words) wins
    and ties go to the smallest pair in string order.
    """
    words = sorted({_symbols(w) for w in _CORPUS.split()})
    merges = []
    while True:
        counts = Counter(pair for w in words for pair in zip(w, w[1:]))
        if not counts:
            return tuple(merges)
        best = min(counts, key=lambda pair: (-counts[pair], pair))
        merges.append(best)
        words = [_merge(w, best) if len(w) > 1 else w for w in words]


@functools.cache
def build_vocab() -> dict[str, int]:
    """CLIP's vocabulary layout: bytes, bytes + "</w>", merge results, BOS, EOS."""
    byte_chars = list(bytes_to_unicode().values())
    tokens = byte_chars + [c + END_OF_WORD for c in byte_chars]
    for a, b in learn_merges():
        tokens.append(a + b)
    tokens += [BOS, EOS]
    vocab: dict[str, int] = {}
    for token in tokens:
        # Two different pairs can concatenate to the same string ("a"+"bc" and
        # "ab"+"c"); such a token keeps its first id, so ids stay contiguous.
        vocab.setdefault(token, len(vocab))
    return vocab


def special_token_ids() -> dict[str, int]:
    """The ids a text encoder config must agree with (CLIP pools at the EOS token)."""
    vocab = build_vocab()
    return {"bos_token_id": vocab[BOS], "eos_token_id": vocab[EOS], "pad_token_id": vocab[EOS]}


def _backend_tokenizer():
    """The fast tokenizer, built with the ``tokenizers`` library.

    Mirrors what transformers' CLIP converter produces, so that the file means
    the same to transformers 4.x and 5.x and to the slow tokenizer.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import BPE

    vocab = build_vocab()
    tokenizer = Tokenizer(
        BPE(
            vocab=vocab,
            merges=list(learn_merges()),
            dropout=None,
            continuing_subword_prefix="",
            end_of_word_suffix=END_OF_WORD,
            fuse_unk=False,
            unk_token=EOS,
        )
    )
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            # CLIP's own word pattern (the slow tokenizer's self.pat).
            pre_tokenizers.Split(
                Regex(
                    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
                ),
                behavior="removed",
                invert=True,
            ),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    # Positional: RobertaProcessing(sep, cls, trim_offsets, add_prefix_space).
    tokenizer.post_processor = processors.RobertaProcessing((EOS, vocab[EOS]), (BOS, vocab[BOS]), False, False)
    tokenizer.add_special_tokens(
        [AddedToken(t, normalized=True, special=True) for t in (BOS, EOS)]
    )
    return tokenizer


def _tokenizer_config() -> dict:
    vocab = build_vocab()
    added = {
        str(vocab[t]): {
            "content": t,
            "lstrip": False,
            "normalized": True,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for t in (BOS, EOS)
    }
    return {
        "add_prefix_space": False,
        "added_tokens_decoder": added,
        "bos_token": BOS,
        "clean_up_tokenization_spaces": False,
        "do_lower_case": True,
        "eos_token": EOS,
        "errors": "replace",
        "model_max_length": MODEL_MAX_LENGTH,
        "pad_token": EOS,
        "tokenizer_class": "CLIPTokenizer",
        "unk_token": EOS,
    }


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_tokenizer(folder: Path) -> None:
    """Write a complete CLIP tokenizer folder (slow and fast files)."""
    folder.mkdir(parents=True, exist_ok=True)
    _write_json(folder / "vocab.json", build_vocab())
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in learn_merges()]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    _backend_tokenizer().save(str(folder / "tokenizer.json"))
    _write_json(folder / "tokenizer_config.json", _tokenizer_config())
    _write_json(
        folder / "special_tokens_map.json",
        {"bos_token": BOS, "eos_token": EOS, "pad_token": EOS, "unk_token": EOS},
    )
