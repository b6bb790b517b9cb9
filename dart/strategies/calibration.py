"""Which calibration text a strategy calibrates on (strategy.calibration): the corpus name and its size. The
statistics over it (dart.strategies.calibration_stats) take the text itself; the names it may come from are
dart.data.texts.CALIBRATION_SOURCES, every one disjoint from every evaluation text. Defaults:
conf/strategy/_calibration.yaml (the dataclass has none). Imports no torch, so a bad knob fails before anything
heavy is imported."""
from __future__ import annotations

import dataclasses

from dart.errors import ConfigError, choice_error


@dataclasses.dataclass
class CalibrationSpec:
    source: str  # a name in dart.data.texts.CALIBRATION_SOURCES
    tokens: int  # calibration tokens in all
    seq_len: int  # tokens per sequence (one forward each)
    sample: int  # cats: |g| values kept per layer for its threshold (all of them when fewer)
    seed: int  # cats: the sample's random generator

    @classmethod
    def from_dict(cls, d: dict | None) -> "CalibrationSpec":
        names = [f.name for f in dataclasses.fields(cls)]
        d = dict(d or {})
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise ConfigError(f"strategy.calibration.{unknown[0]} is not a knob; knobs: {', '.join(names)}")
        missing = [n for n in names if n not in d]
        if missing:
            raise ConfigError(f"strategy.calibration lacks {', '.join(missing)}: build strategies through "
                              "dart.compose.build_strategy, which supplies every default (conf/strategy/_calibration.yaml)")
        return cls(**d).validate()

    def validate(self) -> "CalibrationSpec":
        from dart.data.texts import CALIBRATION_SOURCES

        if self.source not in CALIBRATION_SOURCES:
            raise choice_error("strategy.calibration.source", self.source, CALIBRATION_SOURCES)
        for key in ("tokens", "seq_len", "sample"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"strategy.calibration.{key}={value!r} is not supported; allowed: an integer >= 1")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError(f"strategy.calibration.seed={self.seed!r} is not supported; allowed: an integer")
        return self

    def sequences(self, tokenizer) -> list:
        """The calibration tokens as sequences of at most seq_len (dart.strategies.calibration_stats.calibration_sequences)."""
        from dart.data.texts import CALIBRATION_SOURCES
        from dart.strategies.calibration_stats import calibration_sequences

        text = CALIBRATION_SOURCES[self.source]()
        return calibration_sequences(tokenizer, text, self.tokens, self.seq_len, name=f"the calibration text {self.source!r}")
