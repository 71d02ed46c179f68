"""Person-name comparison for matching: nicknames, initials, typos, double surnames.

Why a hand-kept table rather than the ``nicknames`` package: that data set is
genealogical and links names that are different people today (Andrew/Andrea,
Elizabeth/Lisa, Emily/Emma, Susan/Hannah, Bill/Robert). A wrong link here merges two
people, so the table below holds only the diminutives and spellings that US leads
actually use, and it doubles as the list of *known* given names: two different known
names (Francis/Frances, Robert/Roberta, Jean/Joan) are never taken for a typo.

Every function here is pure and cached where the same names come back over and over
(importing a million prospects meets "John" a few thousand times).
"""

from __future__ import annotations

import functools
import re
from typing import Literal

from rapidfuzz.distance import OSA, JaroWinkler, Levenshtein

from daemon.parse.normalise import fold

#: Entries per memo of a name or matching-key function (here and in keys.py). Common names
#: repeat and stay cached; rare ones (typos, upper-case spellings, new people) miss anyway.
#: The memos fill for as long as new names arrive, so this is the worker's RSS ceiling for
#: them: all full at 8,192 they held 10.7 MiB, which a 30-minute soak showed as a creep
#: of the worker's RSS (not reached before tens of thousands of leads); full at 1,024 they
#: hold 1.2 MiB, reached within the first couple of thousand leads. Matching CPU per lead
#: is the same at 256, 1,024 and 8,192 (0.41-0.43 ms, 27,000 leads, 100,000 prospects).
CACHE_SIZE = 1024

FirstRelation = Literal["same", "nickname", "typo", "initial", "missing", "different"]
LastRelation = Literal["same", "part", "typo", "missing", "different"]

# One line per name: "formal =spelling ...: nickname ...". Spellings are the same name
# (Steven/Stephen); nicknames are diminutives. A nickname may serve several names (Chris).
# fmt: off
_TABLE = """
aaron: ron ronnie
abigail: abby abbie gail
abraham =abram: abe
adam
alan =allen =allan: al
albert: al bert bertie
alexander =alexandre: alex al alec lex xander sandy
alexandra =alexandria: alex lexi sandy
alfred: al alf fred freddie
alice: allie
alison =allison: ally allie
amanda: mandy manda
amelia: millie
andrew: andy drew
angela: angie
ann =anne: annie
anna: annie
anthony =antony: tony
antoinette: toni
arthur: art artie
barbara: barb barbie babs bobbie
beatrice: bea
benjamin: ben benny benji
bernard: bernie
beverly =beverley: bev
bradley: brad
bridget =brigid: biddy
caroline =carolyn: carrie caro
carol =carole
catherine =katherine =kathryn =katharine =kathrine: kate katie katy kathy cathy kat cat kay kitty
kathleen: kathy kate katie kay
charles: charlie chuck chas chaz chip
charlotte: charlie lottie
christina =kristina: chris tina kris chrissy
christine =kristine: chris chrissy kris tina
christopher =kristopher: chris kris topher
clifford: cliff
cynthia: cindy
curtis: curt
daniel: dan danny
danielle: dani
david: dave davey davy
deborah =debra: deb debbie debby
dennis: denny
derek =derrick
diana =diane =dianne: di
donald: don donnie donny
dorothy: dot dottie dotty dora
douglas: doug
edward: ed eddie eddy ted teddy ned
edwin: ed eddie
eleanor =elinor: ellie nell nora
elizabeth =elisabeth: liz lizzie lizzy beth betty betsy bess bessie eliza libby
emily: em emmy
eric =erik: rick
eugene: gene
florence: flo
frances: fran frannie
francis: frank frankie fran
franklin: frank frankie
frederick =frederic: fred freddie freddy rick
gabriel: gabe
gabrielle =gabriela =gabriella: gabby gabi
gerald: gerry jerry
geraldine: geri gerry
gilbert: gil bert
gregory: greg
gwendolyn: gwen
harold: hal harry
henry: hank harry hal
herbert: herb bert
howard: howie
isaac: ike
jacob: jake
jacqueline: jackie jacqui
james: jim jimmy jimmie jamie
janet: jan
janice: jan
jeffrey =geoffrey =jeffery: jeff geoff
jennifer: jen jenn jenny jenni
jeremy =jeremiah: jerry
jerome: jerry
jessica: jess jessie
john =jon: johnny jack
jonathan =johnathan =jonathon: jon jonny
joseph: joe joey
josephine: jo josie
joshua: josh
judith: judy
julia: jules
kenneth: ken kenny
kimberly =kimberley: kim
lawrence =laurence: larry
leonard: len lenny leo
louis =lewis: lou louie
margaret: maggie meg peggy peg marge margie greta
martha: marty mattie patsy
mary: molly polly mae mamie
matthew: matt matty
melissa: mel missy lissa
michael: mike mikey mick mickey
michelle: shelly shelley
mitchell: mitch
nathan =nathaniel: nate nat
nicholas =nicolas: nick nicky
nicole: nikki nicky
pamela: pam
patricia: pat patty patti tricia trish
patrick: pat paddy
peter: pete
philip =phillip: phil
raymond: ray
rebecca: becky becca
richard: rich richie rick ricky dick
robert: rob robbie bob bobby bert
roberta: bobbie berta
rodney: rod
ronald: ron ronnie
rosemary: rose rosie
russell: russ
samantha: sam sammy
samuel: sam sammy
sandra: sandy
sarah =sara: sally sadie
stanley: stan
stephanie: steph stephie
stephen =steven: steve stevie
stuart =stewart: stu
susan =suzanne =susanne: sue susie suzy
teresa =theresa: terry tess tessa teri
terrence =terence: terry
theodore: ted teddy theo
thomas: tom tommy thom
timothy: tim timmy
valerie: val
veronica: ronnie
victor: vic
victoria: vicky vickie tori
vincent: vince vinny
virginia: ginny ginger
walter: walt wally
william: will willie willy bill billy liam
zachary: zach zack
"""

# Given names without a common diminutive: known, so never "a typo" of another name.
_KNOWN = """
aisha amber amy andre andrea angel april ashley austin barry brandon brenda brian bryan
bruce brittany calvin camille carl karl carla caleb cheryl cody craig crystal dale dana
dawn dean denise desmond dolores donna dustin dylan emma erica erin ethan evan evelyn
fiona gail gary garry gene glen glenn gloria grace hannah harpreet hector heather holly
ian irene ivan jack jade jamal jane jason jean jill joan joann joanne joyce juan judy
julie june justin kara kari karen kayla keisha keith kelly kevin kristen kyle laura lauren
leah leslie lesley leticia linda lisa logan lois lori louise lucas luis madison marcus
maria marie marilyn mario mark marisol mason maureen megan miguel monica nancy natalie
noah noor norma olivia omar owen paige paul paula priya rachel ralph renee rita robin
rosa rose roger ross roy ruth ryan scott sean shawn shaun shane sharon shirley sophia
spencer tammy tanya tara tessa tiffany tina todd tracy travis trevor troy tyler vanessa
wayne wendy wesley wren zoe
"""
# fmt: on

_GENERATION_WORDS = {
    "jr": "jr",
    "junior": "jr",
    "sr": "sr",
    "senior": "sr",
    "ii": "ii",
    "2nd": "ii",
    "iii": "iii",
    "3rd": "iii",
    "iv": "iv",
    "4th": "iv",
}
_PARTICLES = frozenset(
    {"de", "del", "della", "la", "le", "van", "von", "der", "den", "da", "di", "du", "dos", "y"}
)
_WORD_RE = re.compile(r"[^\W\d_]+", re.UNICODE)


def _load() -> tuple[dict[str, frozenset[str]], frozenset[str], frozenset[str]]:
    """(name -> groups it belongs to, formal names and spellings, every known name)."""
    groups: dict[str, set[str]] = {}
    formal: set[str] = set()
    for line in _TABLE.strip().splitlines():
        head, _, nicks = line.partition(":")
        names = head.split()
        group = names[0]
        for name in [n.lstrip("=") for n in names]:
            formal.add(name)
            groups.setdefault(name, set()).add(group)
        for nick in nicks.split():
            groups.setdefault(nick, set()).add(group)
    known = frozenset(groups) | frozenset(_KNOWN.split())
    return {k: frozenset(v) for k, v in groups.items()}, frozenset(formal), known


_GROUPS, _FORMAL, KNOWN_NAMES = _load()


@functools.lru_cache(maxsize=CACHE_SIZE)
def letters(text: str) -> str:
    """Lower case, accents and everything but letters removed ("O'Connell" -> "oconnell")."""
    return "".join(_WORD_RE.findall(fold(text)))


@functools.lru_cache(maxsize=CACHE_SIZE)
def split_generation(last: str) -> tuple[str, str | None]:
    """("Platt Sr." -> ("Platt", "sr")): the suffix tells a father from his son."""
    words = last.replace(",", " ").split()
    if len(words) > 1:
        gen = _GENERATION_WORDS.get(words[-1].strip(".").lower())
        if gen:
            return " ".join(words[:-1]), gen
    return last, None


@functools.lru_cache(maxsize=CACHE_SIZE)
def given_name(first: str) -> str:
    """The name a first-name field is compared by: its first word, letters only."""
    words = first.replace(".", ". ").split()
    return letters(words[0]) if words else ""


@functools.lru_cache(maxsize=CACHE_SIZE)
def first_name_keys(first: str) -> frozenset[str]:
    """Blocking values of a first name: its nickname groups, else itself (an initial too)."""
    name = given_name(first)
    if not name:
        return frozenset()
    return _GROUPS.get(name) or frozenset({name})


def is_formal(name: str) -> bool:
    """A full given name of the table (Robert), as opposed to a nickname (Bob)."""
    return name in _FORMAL


def is_initial(name: str) -> bool:
    return len(name) == 1


def _nickname(a: str, b: str) -> bool:
    """Same group, and one is a formal name of it, or one nickname extends the other."""
    shared = _GROUPS.get(a, frozenset()) & _GROUPS.get(b, frozenset())
    if not shared:
        return False
    if a in _FORMAL or b in _FORMAL:
        return True
    return a.startswith(b) or b.startswith(a) or OSA.distance(a, b) <= 1


def _typo(a: str, b: str, *, max_edits: int, min_similarity: float) -> float | None:
    """The similarity (1 - edits / length) when ``a``/``b`` are a slip apart, else None.

    A swap of two neighbours ("Jonh") is a typo at any length from 4 letters; another
    edit must leave ``min_similarity``: "Nowak"/"Novak" (0.8) is one, "Hall"/"Hill"
    (0.75) are two names. Jaro-Winkler is not used here: it punishes an early slip
    ("Sehneider") more than a late one.
    """
    if min(len(a), len(b)) < 4:
        return None
    edits = OSA.distance(a, b, score_cutoff=max_edits)
    if edits > max_edits:
        return None
    similarity = 1.0 - edits / max(len(a), len(b))
    swap = edits == 1 and Levenshtein.distance(a, b, score_cutoff=2) == 2
    return similarity if swap or similarity >= min_similarity else None


def compare_first(
    a: str | None, b: str | None, *, max_edits: int = 1, min_similarity: float = 0.8
) -> tuple[FirstRelation, float]:
    """How two first names relate, and a similarity in [0, 1] for ranking."""
    x, y = given_name(a or ""), given_name(b or "")
    if not x or not y:
        return "missing", 0.7
    if x == y:
        return ("initial", 0.85) if is_initial(x) else ("same", 1.0)
    if is_initial(x) or is_initial(y):
        return ("initial", 0.85) if x[0] == y[0] else ("different", 0.0)
    if _nickname(x, y):
        return "nickname", 0.9
    if not (x in KNOWN_NAMES and y in KNOWN_NAMES):
        typo = _typo(x, y, max_edits=max_edits, min_similarity=min_similarity)
        if typo is not None:
            return "typo", min(typo, 0.92)
    return "different", 0.3 * float(JaroWinkler.normalized_similarity(x, y))


@functools.lru_cache(maxsize=CACHE_SIZE)
def surname_parts(last: str) -> tuple[str, ...]:
    """Words of a surname without particles and generation ("García-López Jr." -> 2)."""
    base, _ = split_generation(last)
    words = [letters(w) for w in re.split(r"[\s\-]+", base)]
    kept = tuple(w for w in words if w and w not in _PARTICLES)
    return kept or tuple(w for w in words if w)


def compare_last(
    a: str | None, b: str | None, *, max_edits: int = 1, min_similarity: float = 0.8
) -> tuple[LastRelation, float]:
    """How two surnames relate (generation suffixes ignored: see :func:`generation`)."""
    pa, pb = surname_parts(a or ""), surname_parts(b or "")
    if not pa or not pb:
        return "missing", 0.7
    ja, jb = "".join(pa), "".join(pb)
    if ja == jb:
        return "same", 1.0
    sa, sb = set(pa), set(pb)
    if sa < sb or sb < sa:
        return "part", 0.9
    typo = _typo(ja, jb, max_edits=max_edits, min_similarity=min_similarity)
    if typo is not None:
        return "typo", min(typo, 0.95)
    return "different", 0.3 * float(JaroWinkler.normalized_similarity(ja, jb))


def generation(a: str | None, b: str | None) -> Literal["same", "conflict", "one_sided"]:
    """Sr./Jr. on the two surnames: equal (or both absent), different, or on one side only."""
    ga = split_generation(a or "")[1]
    gb = split_generation(b or "")[1]
    if ga == gb:
        return "same"
    return "conflict" if ga and gb else "one_sided"
