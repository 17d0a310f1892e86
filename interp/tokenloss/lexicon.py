"""The label sets of the token features (domains, tag families, delimiter roles) and the English
function-word lexicon that separates ``function`` from ``content`` words."""
from __future__ import annotations

DOMAINS = ("prose", "code", "markup")
TAGS = ("content", "function", "keyword", "identifier", "number", "punct", "markup", "space", "other")
DELIMS = ("none", "open_bracket", "close_bracket", "open_quote", "close_quote", "open_tag", "close_tag")
TAG_CODE = {t: i for i, t in enumerate(TAGS)}     # tag family -> its int8 code in `CharAnn.tag`
DELIM_CODE = {d: i for i, d in enumerate(DELIMS)}  # delimiter role -> its int8 code in `CharAnn.delim`

#: English closed-class (function) words, written for this toolkit: articles and determiners,
#: quantifiers, personal / possessive / reflexive / relative / interrogative / indefinite pronouns,
#: prepositions, coordinating and subordinating conjunctions, auxiliaries and modals (all forms),
#: negation and particles, wh-adverbs, cardinal numerals one..ten, and the common conjunctive and
#: degree adverbs that function-word lists include (then, thus, however, very, also, only, ...),
#: plus contractions. Every other alphabetic word is ``content`` (open class).
FUNCTION_WORDS = frozenset("""
a an the this that these those my your his her its our their whose which what whatever whichever
some any no every each either neither all both half several many much more most few fewer fewest
less least little other another such enough
i me mine myself you yours yourself yourselves he him himself she hers herself it itself we us ours
ourselves they them theirs themselves one oneself who whom whoever whomever someone somebody
something anyone anybody anything everyone everybody everything nobody nothing none
about above across after against along amid among amongst around as at before behind below beneath
beside besides between beyond but by despite down during except for from in inside into like near
of off on onto out outside over past per since than through throughout till to toward towards under
underneath unlike until up upon via with within without versus
and or nor so yet although though because if unless whereas while whilst whether once lest
be am is are was were been being have has had having do does did doing will would shall should can
could may might must ought cannot
not n't 's 're 've 'll 'd 'm
don't doesn't didn't isn't aren't wasn't weren't won't wouldn't can't couldn't shouldn't mustn't
haven't hasn't hadn't shan't i'm you're we're they're it's that's there's here's what's who's
let's i've you've we've they've i'll you'll he'll she'll we'll they'll i'd you'd he'd she'd we'd
they'd he's she's
there here when where why how wherever whenever however
then thus hence therefore otherwise also only even just very too quite rather else instead
two three four five six seven eight nine ten
""".split())
