"""A GGUF model loaded by llama.cpp, through llama-cpp-python's typed C bindings: its weights, and
its vocabulary for tokenizing prompts and turning sampled tokens back into bytes.

Tokenization follows `Llama.tokenize` / `Llama.detokenize` exactly, so prompt counts and text are
what llama-cpp-python's own API produces for the same file. Tokenizing only reads the vocabulary,
so request threads do it while the decode loop runs."""

from __future__ import annotations

import ctypes
from pathlib import Path

import llama_cpp

from infer_fn.engines.base import EngineError


class LoadedModel:
    def __init__(self, path: Path) -> None:
        model = llama_cpp.llama_model_load_from_file(
            str(path).encode("utf-8"), llama_cpp.llama_model_default_params()
        )
        if model is None:
            raise EngineError(f"llama.cpp could not load {path}")
        vocab = llama_cpp.llama_model_get_vocab(model)
        if vocab is None:
            llama_cpp.llama_model_free(model)
            raise EngineError(f"{path} has no vocabulary")
        self.pointer: llama_cpp.llama_model_p | None = model
        self._vocab = vocab
        self.n_vocab = int(llama_cpp.llama_vocab_n_tokens(vocab))
        self.bos = int(llama_cpp.llama_vocab_bos(vocab))
        self.eos = int(llama_cpp.llama_vocab_eos(vocab))
        template = llama_cpp.llama_model_chat_template(model, None)
        self.chat_template = template.decode("utf-8") if template else None
        # What the decode loop asks of every sampled token, remembered: each call into the C
        # library lets another thread take the GIL the loop needs back.
        self._pieces: dict[int, bytes] = {}
        self._ends: dict[int, bool] = {}

    def close(self) -> None:
        model, self.pointer = self.pointer, None
        if model is not None:
            llama_cpp.llama_model_free(model)

    def tokenize(self, text: str, *, add_bos: bool) -> list[int]:
        data = text.encode("utf-8")
        size = len(data) + 2
        while True:
            tokens = (llama_cpp.llama_token * size)()
            # Special tokens in the text (a rendered chat template's) are parsed as such.
            count = llama_cpp.llama_tokenize(
                self._vocab, data, len(data), tokens, size, add_bos, True
            )
            if count >= 0:
                return list(tokens[:count])
            size = -count

    def piece(self, token: int) -> bytes:
        """The bytes of one generated token (a character may span several tokens)."""
        piece = self._pieces.get(token)
        if piece is None:
            piece = self._pieces[token] = self.token_bytes(token, special=False)
        return piece

    def token_bytes(self, token: int, *, special: bool) -> bytes:
        """A token's bytes; `special` renders control tokens (<|im_end|>) as their text."""
        size = 32
        while True:
            buffer = ctypes.create_string_buffer(size)
            count = llama_cpp.llama_token_to_piece(self._vocab, token, buffer, size, 0, special)
            if count >= 0:
                return buffer.raw[:count]
            size = -count

    def is_end(self, token: int) -> bool:
        """End of generation: the end-of-sequence token or any other the model ends turns with."""
        end = self._ends.get(token)
        if end is None:
            end = self._ends[token] = bool(llama_cpp.llama_vocab_is_eog(self._vocab, token))
        return end
