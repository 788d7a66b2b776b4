"""Synthetic speech with exact phone timing, training data for the audio-to-mouth model, all
produced on this machine.

Festival (Debian packages ``festival``, ``festvox-kallpc16k``, ``festvox-kdlpc16k`` and
``festvox-us-slt-hts``) and espeak-ng (Debian package ``espeak-ng``): sentences written below and
random word sequences drawn (fixed seed) from the word list below, spoken at several speaking rates
(Festival) or by random espeak-ng accents, voice variants, rates and pitches; the phone segments
Festival reports (``utt.save.segs``) or espeak-ng's phoneme events are mapped to mouth targets
through :data:`VISEMES` and smoothed for coarticulation. Every waveform is augmented for real
microphones (:mod:`engines.audio2mouth.augment`) before the server's own log-mel
(:class:`engines.features.LogMel`) is computed on it, so training sees exactly the features the
server computes.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engines import features
from engines.audio2mouth.augment import augment, change_speed

SR = features.SAMPLE_RATE

# Mouth targets per phone (Festival's US "radio" phone set): open (0..1, 1 = shouted "ah"),
# width (-1 rounded .. +1 spread), closure (0..1, lips pressed). Diphthongs are two halves.
VISEMES: dict[str, tuple[float, float, float]] = {
    "pau": (0.0, 0.0, 0.0),
    "h#": (0.0, 0.0, 0.0),
    "aa": (0.65, 0.1, 0.0), "ae": (0.55, 0.4, 0.0), "ah": (0.50, 0.1, 0.0), "ao": (0.55, -0.4, 0.0),
    "ax": (0.30, 0.0, 0.0), "eh": (0.45, 0.4, 0.0), "er": (0.30, -0.3, 0.0), "ih": (0.30, 0.4, 0.0),
    "iy": (0.20, 0.6, 0.0), "uh": (0.30, -0.5, 0.0), "uw": (0.18, -0.8, 0.0),
    "b": (0.0, 0.0, 1.0), "p": (0.0, 0.0, 1.0), "m": (0.0, 0.0, 1.0),
    "f": (0.06, 0.1, 0.3), "v": (0.06, 0.1, 0.3),
    "th": (0.18, 0.1, 0.0), "dh": (0.18, 0.1, 0.0),
    "t": (0.15, 0.2, 0.0), "d": (0.15, 0.2, 0.0), "n": (0.15, 0.2, 0.0), "l": (0.25, 0.1, 0.0),
    "s": (0.10, 0.4, 0.0), "z": (0.10, 0.4, 0.0),
    "sh": (0.15, -0.5, 0.0), "zh": (0.15, -0.5, 0.0), "ch": (0.15, -0.5, 0.0), "jh": (0.15, -0.5, 0.0),
    "k": (0.25, 0.0, 0.0), "g": (0.25, 0.0, 0.0), "ng": (0.20, 0.0, 0.0),
    "hh": (0.35, 0.0, 0.0), "r": (0.20, -0.4, 0.0), "w": (0.10, -0.8, 0.0), "y": (0.15, 0.5, 0.0),
}
DIPHTHONGS = {"aw": ("aa", "uw"), "ay": ("aa", "iy"), "ey": ("eh", "iy"), "ow": ("ao", "uw"), "oy": ("ao", "iy")}
BILABIALS = {"b", "p", "m"}
COARTICULATION_SIGMA_S = 0.025  # Gaussian smoothing of the phone-wise targets

SENTENCES = [
    "The birch canoe slid on the smooth planks.", "Glue the sheet to the dark blue background.",
    "It's easy to tell the depth of a well.", "These days a chicken leg is a rare dish.",
    "Rice is often served in round bowls.", "The juice of lemons makes fine punch.",
    "The box was thrown beside the parked truck.", "The hogs were fed chopped corn and garbage.",
    "Four hours of steady work faced us.", "A large size in stockings is hard to sell.",
    "The boy was there when the sun rose.", "A rod is used to catch pink salmon.",
    "The source of the huge river is the clear spring.", "Kick the ball straight and follow through.",
    "Help the woman get back to her feet.", "A pot of tea helps to pass the evening.",
    "Smoky fires lack flame and heat.", "The soft cushion broke the man's fall.",
    "The salt breeze came across from the sea.", "The girl at the booth sold fifty bonds.",
    "Hello, my name is Paul and I am happy to meet you.", "Please pass the butter and the bread.",
    "Maybe we should meet at the museum at about nine.", "Bob bought a big map of Bombay.",
    "Oh wow, that was amazing!", "Why do you always say that?", "I am not sure about this, but maybe.",
    "We will be ready by Monday morning.", "Mom made a mango pie for my birthday.",
    "Open the window, the room is too warm.", "You know, I really thought it would be easier.",
    "Peter picked a peck of pickled peppers.", "She sells sea shells by the sea shore.",
    "The weather is beautiful today, isn't it?", "Come on, we are going to be late again.",
    "Thank you very much for watching this video.", "Please remember to subscribe and share.",
    "Our team won the match by a wide margin.", "My brother moved to Boston last summer.",
    "What happened to the money we put aside?", "Everybody wants to be happy and free.",
]
WORDS = (
    "a about above across act add after again against age ago air all almost alone along already also always am among an "
    "and animal another answer any anything appear apple are area arm around art as ask at away baby back bad bag ball bank "
    "bar base be bear beat beautiful became because become bed been before began begin behind being believe below best "
    "better between big bird black blood blue boat body book born both bottom box boy bread break bright bring brother "
    "brown build but buy by call came can car care carry case cat catch cause center change child choose church city "
    "class clear close cold color come common cool could country course cover cup cut dark day dead deal dear decide "
    "deep did die different do doctor does dog done door down draw dream dress drink drive drop dry during each early "
    "earth east easy eat edge egg eight either else end enough even evening ever every eye face fact fall family far "
    "farm fast father fear feel feet few field fight fill find fine fire first fish five floor fly follow food foot "
    "for force forest form four free fresh friend from front fruit full game garden gave get girl give glass go god gold "
    "good got great green ground group grow guess gun had hair half hand happen happy hard has hat have he head hear "
    "heart heavy help her here high hill him his hit hold hole home hope horse hot hour house how huge human hundred "
    "I ice idea if important in inside into iron is island it job join joy judge jump just keep key kill kind king "
    "kitchen knew know lady lake land language large last late laugh law lay lead learn least leave left leg less let "
    "letter life light like line lip list listen little live long look lose lot loud love low machine made main make "
    "man many map mark market match may me mean meat meet member memory middle might mile milk mind minute miss moment "
    "money month moon more morning most mother mountain mouth move much music must my name nation near neck need never "
    "new news next nice night nine no noise none north nose not nothing now number object ocean of off offer office "
    "often oh oil old on once one only open or order other our out over own page paint pair paper park part party pass "
    "past pay people perhaps person pick picture piece place plan plant play please plus point poor possible power "
    "press pretty probably problem pull push put queen question quick quiet quite rain raise ran reach read ready real "
    "reason red remember rest rich ride right ring river road rock roll room rope rose round rule run sad safe said "
    "same sat save saw say school sea season seat second see seem sell send sense seven shape share she ship shoe shop "
    "short should shoulder show side sign simple since sing sister sit six size skin sky sleep slow small smell smile "
    "snow so soft some son song soon sound south space speak special speed spring square stand star start state stay "
    "step still stone stop store story street strong study such sudden summer sun supply sure surprise sweet table "
    "take talk tall teach team tell ten than thank that the their them then there these they thick thin thing think "
    "third this those though thought thousand three through throw time tiny to today together told tomorrow too took "
    "top total touch toward town track train travel tree trip true try turn twelve two under until up upon us use "
    "usual valley very village visit voice vowel wait walk wall want war warm was wash watch water wave way we wear "
    "weather week weight well went were west what wheel when where which while white who whole why wide wife wild will "
    "win window winter wish with woman wonder wood word work world would write wrong yard year yellow yes yet you young "
    "your zoo baby bubble pebble maybe mumble bump map mop moop peep bob pop mama papa"
).split()


@dataclass
class Utterance:
    """One utterance: 16 kHz audio and mouth targets at 100 Hz (the mel frame centres)."""

    name: str
    pcm: np.ndarray  # float32 16 kHz
    targets: np.ndarray  # (n_mel_frames, 3) at the mel frame centres
    mask: np.ndarray  # (n_mel_frames, 3) weight of each target (0 where unknown)


def require_festival() -> str:
    exe = shutil.which("festival")
    if exe is None:
        raise SystemExit(
            "festival is not installed: apt-get install -y festival festvox-kallpc16k festvox-us-slt-hts"
        )
    return exe


def random_texts(count: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    texts = list(SENTENCES)
    while len(texts) < count:
        n = int(rng.integers(4, 12))
        texts.append(" ".join(rng.choice(WORDS, n)).capitalize() + rng.choice([".", ".", "?", "!", ","]))
    return texts[:count]


FESTIVAL_VOICES = {
    "kal": "voice_kal_diphone", "slt": "voice_cmu_us_slt_arctic_hts", "ked": "voice_ked_diphone",
    # MBROLA diphones cut from recordings of real speakers (Debian contrib/non-free: mbrola,
    # mbrola-us1/us2/us3/en1, festvox-us1/us2/us3/en1): US female, two US males, British male
    "us1": "voice_us1_mbrola", "us2": "voice_us2_mbrola", "us3": "voice_us3_mbrola", "en1": "voice_en1_mbrola",
    "rab": "voice_rab_diphone",  # British male diphones (festvox-rablpc16k)
}
# en1 and rab name their phones in the British MRPA set; the viseme table uses the US "radio" names
MRPA_PHONES = {
    "#": "pau", "@": "ax", "@@": "er", "a": "ae", "aa": "aa", "ai": "ay", "au": "aw", "e": "eh", "e@": "eh",
    "ei": "ey", "i": "ih", "i@": "ih", "ii": "iy", "o": "ao", "oi": "oy", "oo": "ao", "ou": "ow", "u": "uh",
    "u@": "uh", "uh": "ah", "uu": "uw", "h": "hh",
}
MRPA_VOICES = {"en1", "rab"}


def synthesize_festival(texts: list[str], voice: str, stretch: float, workdir: Path) -> list[tuple[np.ndarray, list[tuple[float, str]]]]:
    """Speak each text with Festival; returns (16 kHz pcm, [(end_s, phone), ...]) per text."""
    exe = require_festival()
    lines = [f"({FESTIVAL_VOICES[voice]})", f"(Parameter.set 'Duration_Stretch {stretch})"]
    for i, text in enumerate(texts):
        safe = text.replace('"', "").replace("\\", "")
        lines.append(f'(set! utt (utt.synth (Utterance Text "{safe}")))')
        lines.append(f'(utt.save.wave utt "{workdir}/{i}.wav" \'riff)')
        lines.append(f'(utt.save.segs utt "{workdir}/{i}.segs")')
    script = workdir / "run.scm"
    script.write_text("\n".join(lines) + "\n")
    subprocess.run([exe, "-b", str(script)], check=True, capture_output=True)
    out = []
    for i in range(len(texts)):
        pcm = read_wav_16k(workdir / f"{i}.wav")
        segs = []
        for line in (workdir / f"{i}.segs").read_text().splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[0] != "#":
                phone = MRPA_PHONES.get(parts[2], parts[2]) if voice in MRPA_VOICES else parts[2]
                segs.append((float(parts[0]), phone))
        out.append((pcm, segs))
    return out


# espeak-ng (Debian package ``espeak-ng``): a formant synthesiser with many English accents and
# voice variants; its phoneme events (libespeak-ng's C API, through ctypes) give the phone start
# times. Its phoneme mnemonics are mapped onto the Festival phone names of :data:`VISEMES`.
ESPEAK_PHONES = {
    "a": "ae", "a#": "ax", "A:": "aa", "A@": "aa", "aa": "ae", "A": "aa", "@": "ax", "@2": "ax", "@5": "ax",
    "@L": "l", "3:": "er", "3": "er", "E": "eh", "e@": "eh", "e": "eh", "eI": "ey", "I": "ih", "I2": "ih",
    "I#": "ih", "i": "iy", "i:": "iy", "i@": "iy", "i@3": "iy", "0": "aa", "O:": "ao", "O@": "ao", "O": "ao",
    "o@": "ao", "0@": "ao", "oU": "ow", "o:": "ow", "OI": "oy", "aI": "ay", "aU": "aw", "aI@": "ay", "aI3": "ay",
    "aU@": "aw", "U": "uh", "u:": "uw", "U@": "uh", "V": "ah", "@U": "ow", "IR": "ih", "VR": "ah",
    "p": "p", "b": "b", "t": "t", "d": "d", "k": "k", "g": "g", "f": "f", "v": "v", "s": "s", "z": "z",
    "m": "m", "n": "n", "l": "l", "r": "r", "w": "w", "h": "hh", "T": "th", "D": "dh", "S": "sh", "Z": "zh",
    "N": "ng", "j": "y", "tS": "ch", "dZ": "jh", "t#": "t", "?": "t", "n-": "n", "l/": "l", "r-": "r",
    "x": "k", "C": "hh", "z#": "z", "d#": "d", "t2": "t", "d2": "d", "m-": "m", "W": "w",
}
ESPEAK_SHIFT_S = 0.02
ESPEAK_VOICES = ("en-us", "en", "en-gb-x-rp", "en-029", "en-gb-scotland", "en-us-nyc", "en-gb-x-gbclan")
ESPEAK_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5",
                   "klatt", "klatt2", "klatt3", "klatt4", "Andy", "Annie", "belinda", "john", "linda", "max")


def espeak_phone(mnemonic: str) -> str:
    m = mnemonic.strip("'\",%=")
    if not m or m.startswith("_"):
        return "pau"
    if m in ESPEAK_PHONES:
        return ESPEAK_PHONES[m]
    for k in (m[:2], m[:1]):  # e.g. "@r" -> "@", "i@3" variants
        if k in ESPEAK_PHONES:
            return ESPEAK_PHONES[k]
    return "ax"


class _Espeak:
    """libespeak-ng in synchronous mode with phoneme events."""

    def __init__(self) -> None:
        import ctypes
        import ctypes.util

        name = ctypes.util.find_library("espeak-ng") or "libespeak-ng.so.1"
        try:
            self.lib = ctypes.CDLL(name)
        except OSError as exc:
            raise SystemExit("espeak-ng is not installed: apt-get install -y espeak-ng") from exc

        class Event(ctypes.Structure):
            _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint), ("text_position", ctypes.c_int),
                        ("length", ctypes.c_int), ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                        ("user_data", ctypes.c_void_p), ("id", ctypes.c_char * 8)]

        callback_type = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                                         ctypes.POINTER(Event))
        self.rate = self.lib.espeak_Initialize(2, 0, None, 1)  # AUDIO_OUTPUT_SYNCHRONOUS, phoneme events
        if self.rate <= 0:
            raise RuntimeError("espeak_Initialize failed")
        self.chunks: list[np.ndarray] = []
        self.events: list[tuple[int, str]] = []

        def collect(wav, n, events):  # noqa: ANN001
            if n > 0:
                self.chunks.append(np.ctypeslib.as_array(wav, (n,)).copy())
            i = 0
            while events[i].type != 0:  # espeakEVENT_LIST_TERMINATED
                if events[i].type == 7:  # espeakEVENT_PHONEME
                    self.events.append((events[i].sample, events[i].id.decode("ascii", "replace")))
                i += 1
            return 0

        self._callback = callback_type(collect)  # keep a reference
        self.lib.espeak_SetSynthCallback(self._callback)

    def speak(self, text: str, voice: str, rate: int, pitch: int, pitch_range: int) -> tuple[np.ndarray, list[tuple[float, str]]]:
        from scipy.signal import resample_poly

        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise RuntimeError(f"espeak-ng voice {voice} not found")
        for param, value in ((1, rate), (3, pitch), (4, pitch_range)):  # espeakRATE, espeakPITCH, espeakRANGE
            self.lib.espeak_SetParameter(param, int(value), 0)
        self.chunks, self.events = [], []
        raw = text.encode()
        self.lib.espeak_Synth(raw, len(raw) + 1, 0, 1, 0, 0, None, None)  # POS_CHARACTER, espeakCHARS_AUTO
        self.lib.espeak_Synchronize()
        pcm = np.concatenate(self.chunks).astype(np.float32) / 32768.0 if self.chunks else np.zeros(1, np.float32)
        total = len(pcm) / self.rate
        g = np.gcd(self.rate, SR)
        pcm = resample_poly(pcm, SR // g, self.rate // g).astype(np.float32)
        starts = [(s / self.rate, espeak_phone(p)) for s, p in self.events]
        segs: list[tuple[float, str]] = []
        if starts and starts[0][0] > 0:
            segs.append((starts[0][0], "pau"))
        for k, (start, phone) in enumerate(starts):
            end = starts[k + 1][0] if k + 1 < len(starts) else total
            if end > start:
                segs.append((end, phone))
        if not segs or segs[-1][0] < total:
            segs.append((total, "pau"))
        return pcm, segs


def synthesize_espeak(texts: list[str], rng: np.random.Generator) -> list[tuple[np.ndarray, list[tuple[float, str]]]]:
    """Each text with a random espeak-ng accent, voice variant, speaking rate and pitch."""
    engine = _Espeak()
    out = []
    for text in texts:
        voice = f"{rng.choice(ESPEAK_VOICES)}+{rng.choice(ESPEAK_VARIANTS)}"
        out.append(engine.speak(text, voice, rate=int(rng.integers(130, 210)), pitch=int(rng.integers(25, 75)),
                                pitch_range=int(rng.integers(20, 90))))
    return out


def read_wav_16k(path: Path) -> np.ndarray:
    from scipy.signal import resample_poly

    with wave.open(str(path)) as w:
        rate, width, channels = w.getframerate(), w.getsampwidth(), w.getnchannels()
        raw = w.readframes(w.getnframes())
    assert width == 2
    pcm = np.frombuffer(raw, np.int16).astype(np.float32) / 32768.0
    if channels > 1:
        pcm = pcm.reshape(-1, channels).mean(axis=1)
    if rate != SR:
        g = np.gcd(rate, SR)
        pcm = resample_poly(pcm, SR // g, rate // g).astype(np.float32)
    return pcm


def phone_targets(segs: list[tuple[float, str]], n_frames: int, time_scale: float = 1.0) -> np.ndarray:
    """(n_frames, 3) targets at the mel frame centres from [(end_s, phone)], smoothed."""
    centres = (np.arange(n_frames) * features.HOP + features.WIN / 2) / SR
    raw = np.zeros((n_frames, 3), np.float32)
    bilabial = np.zeros(n_frames, bool)
    start = 0.0
    for end, phone in segs:
        end *= time_scale
        halves = DIPHTHONGS.get(phone)
        pieces = [(start, end, phone)] if halves is None else [
            (start, (start + end) / 2, halves[0]), ((start + end) / 2, end, halves[1])]
        for a, b, p in pieces:
            sel = (centres >= a) & (centres < b)
            raw[sel] = VISEMES.get(p, (0.2, 0.0, 0.0))
            if p in BILABIALS:
                # the lips are sealed over the middle of the stop / nasal
                core = (centres >= a + 0.2 * (b - a)) & (centres < b - 0.2 * (b - a))
                bilabial |= core
        start = end
    sigma = COARTICULATION_SIGMA_S * 100.0
    radius = int(3 * sigma) + 1
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    kernel /= kernel.sum()
    smooth = np.stack([np.convolve(np.pad(raw[:, c], radius, mode="edge"), kernel, mode="valid") for c in range(3)], 1)
    smooth[bilabial, 0] = np.minimum(smooth[bilabial, 0], 0.02)
    smooth[bilabial, 2] = np.maximum(smooth[bilabial, 2], 0.9)
    return smooth.astype(np.float32)


def tts_utterances(n_texts: int, copies: int, seed: int = 0, log=print, espeak_texts: int = 0,
                   festival_voices: tuple[str, ...] = ("kal", "slt")) -> list[Utterance]:
    """Festival speech for ``n_texts`` texts per voice and speaking rate, plus ``espeak_texts`` texts
    spoken by random espeak-ng voices; ``copies`` augmented copies each."""
    rng = np.random.default_rng(seed)
    logmel = features.LogMel()
    texts = random_texts(n_texts, seed)
    out: list[Utterance] = []

    def add(name: str, spoken: list[tuple[np.ndarray, list[tuple[float, str]]]]) -> None:
        for i, (pcm, segs) in enumerate(spoken):
            for c in range(copies):
                speed = float(rng.uniform(0.9, 1.1)) if c > 0 else 1.0
                audio = change_speed(pcm, speed) if speed != 1.0 else pcm
                # leading / trailing pause, so that noise-only stretches longer than the
                # context are seen too (targets: closed)
                lead = int(rng.uniform(0.1, 1.5) * SR)
                audio = np.concatenate([np.zeros(lead, np.float32), audio,
                                        np.zeros(int(rng.uniform(0.1, 1.5) * SR), np.float32)])
                audio = augment(audio, rng, strength=1.0 if c > 0 else 0.3)
                mel = logmel.frames(audio)
                shifted = [(end / speed + lead / SR, p) for end, p in segs]
                targets = phone_targets(shifted, len(mel))
                out.append(Utterance(f"{name}-{i}-{c}", audio, targets, np.ones_like(targets)))

    for voice in festival_voices:
        for stretch in (0.85, 1.0, 1.25):
            with tempfile.TemporaryDirectory() as tmp:
                spoken = synthesize_festival(texts, voice, stretch, Path(tmp))
            add(f"{voice}-{stretch}", spoken)
            log(f"  festival {voice} stretch {stretch}: {len(texts)} texts x {copies} copies")
    if espeak_texts:
        # texts of their own (another seed); 20 ms earlier: espeak-ng's phoneme events come about
        # 20-30 ms later than the acoustic phone boundaries (energy against targets peaks there,
        # where Festival's peak at 0)
        spoken = synthesize_espeak(random_texts(espeak_texts + len(SENTENCES), seed + 1000)[len(SENTENCES):]
                                   + list(SENTENCES), np.random.default_rng(seed + 1))
        add("espeak", [(pcm, [(max(end - ESPEAK_SHIFT_S, 0.0), p) for end, p in segs]) for pcm, segs in spoken])
        log(f"  espeak-ng: {len(spoken)} texts x {copies} copies")
    return out


FIXTURE_TEXT = "Mama, a palm. Bob may pop by."


def write_fixture(path: Path) -> None:
    """A short Festival utterance (kal voice) with its phone segments, for the unit tests."""
    with tempfile.TemporaryDirectory() as tmp:
        [(pcm, segs)] = synthesize_festival([FIXTURE_TEXT], "kal", 1.0, Path(tmp))
    ends = np.array([e for e, _ in segs], np.float32)
    phones = np.array([p for _, p in segs])
    np.savez_compressed(path, pcm=(np.clip(pcm, -1, 1) * 32767).astype(np.int16), ends=ends, phones=phones,
                        text=np.array(FIXTURE_TEXT))
