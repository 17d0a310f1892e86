"""Independent checker: recompute every task's answers and labels from the decoded words alone.

Deliberately shares no code with interp/tasks (only the word spellings). Each ``check_<task>``
reads one example's words (padding stripped) and returns a ``Check``:
  answers     [(p, word)]: positions whose next word is determined by the prompt up to p, and that
              word (the final answer last; copy: every predictable repeat token; state_recall with
              cot: every ``is``, then the final answer),
  labels      {name: per-token list}, the state after each token,
  facts       positions whose word is the fact a clean/corrupted pair may change.
Only state_recall and parity need a knob the words cannot show (``modulus``).
"""
import itertools
import re
from dataclasses import dataclass

COLORS = ["red", "blue", "green", "yellow", "black", "white", "pink", "brown", "gray", "orange",
          "purple", "gold", "silver", "teal", "navy", "olive"]
OPENS, CLOSES = "([{<", ")]}>"


@dataclass
class Check:
    answers: list
    labels: dict
    facts: list


def _index(word, prefix):
    m = re.fullmatch(prefix + r"(\d+)", word)
    assert m, (word, prefix)
    return int(m.group(1))


def check_mqar(words):
    sep = words.index("<sep>")
    ctx = words[1:sep]
    bound, where = {}, {}
    bound_value, dist = [-1] * len(words), [-1] * len(words)
    p = 1
    while p < sep and words[p] != "_":
        key, val = words[p], int(words[p + 1])
        assert key not in bound, "a key is bound twice"
        bound[key], where[key] = val, p
        bound_value[p] = val
        p += 2
    assert all(w == "_" for w in ctx[p - 1:]), "filler expected after the pairs"
    answers = []
    for p in range(sep + 1, len(words), 2):
        key = words[p]
        bound_value[p] = bound[key]
        dist[p] = p - where[key]
        answers.append((p, str(bound[key])))
    last_key = words[answers[-1][0]]
    return Check(answers, {"bound_value": bound_value, "write_distance": dist}, [where[last_key] + 1])


def check_state_recall(words, modulus):
    last_q = len(words) - 1 - words[::-1].index("?")
    qvar = words[last_q + 1]
    n_vars = 1 + max(_index(w, "x") for w in words if re.fullmatch(r"x\d+", w))
    vals = {}
    n_stmt, last_write = 0, None
    var_value, q_value, since = [], [], []
    answers, facts, stmt, stmt_start = [], [], [], None
    p = 0
    while p < len(words):
        w = words[p]
        if w == "is":                  # cot: "is v" states the queried variable's current value
            answers.append((p, str(vals[qvar])))
            span = [p, p + 1]
        elif w == ";":
            if stmt[0] != "?":         # "? xq ;" (cot) only announces the query
                a, op, b = stmt
                if a == "swap":
                    vals[op], vals[b] = vals[b], vals[op]
                    touched = qvar in (op, b)
                else:
                    if op == "=":
                        vals[a] = vals[b] if b.startswith("x") else int(b)
                    else:
                        assert op == "+=", stmt
                        vals[a] = (vals[a] + int(b)) % modulus
                    if not b.startswith("x"):
                        facts.append(stmt_start + 2)
                    touched = a == qvar
                n_stmt += 1
                if touched:
                    last_write = n_stmt
            stmt, span = [], [p]
        else:
            if not stmt:
                stmt_start = p
            if w != "<bos>":
                stmt.append(w)
            span = [p]
        for _ in span:
            var_value.append([vals.get(f"x{j}", -1) for j in range(n_vars)])
            q_value.append(vals.get(qvar, -1))
            since.append(-1 if last_write is None else n_stmt - last_write)
        p += len(span)
    answers.append((last_q + 1, str(vals[qvar])))
    labels = {"var_value": var_value, "query_var_value": q_value, "steps_since_write": since}
    return Check(answers, labels, facts)


def check_permutation(words):
    sep = words.index("<sep>")
    n = int(words[1][1])
    elements = list(itertools.permutations(range(n)))    # lexicographic, as the spelling p{n}_...
    r, run = tuple(range(n)), [-1]
    for w in words[1:sep]:
        assert w.startswith(f"p{n}_")
        p = tuple(int(c) for c in w.split("_")[1])
        r = tuple(p[i] for i in r)                       # apply r first, then p
        run.append(elements.index(r))
    run += [run[-1]] * (len(words) - sep)
    return Check([(sep, f"p{n}_" + "".join(map(str, r)))], {"running_product": run},
                 list(range(1, sep)))


def check_entity_tracking(words):
    order, box, last_set = [], {}, {}
    labels, stmt = [], []
    for p, w in enumerate(words):
        if w == ";":
            if stmt[0] == "move":
                _, obj, b = stmt
                assert obj in box and box[obj] != _index(b, "box"), "move to the same box"
            else:
                obj, kw, b = stmt
                assert kw == "in" and obj not in box
                order.append(obj)
            box[obj], last_set[obj] = _index(b, "box"), p - 1
            stmt = []
        elif w != "<bos>":
            stmt.append(w)
        labels.append([box[o] for o in order])
    n_objects = len(order)
    labels = [row + [-1] * (n_objects - len(row)) for row in labels]
    assert words[-4] == "where" and words[-2] == "?"
    q = words[-3]
    return Check([(len(words) - 2, f"box{box[q]}")], {"box_of": labels}, [last_set[q]])


def check_pronoun(words):
    assert words[-3:-1] == ["has", "?"]
    pron = words[-4]
    pronoun_of, color_of, intro_color_pos = {}, {}, {}
    ref, ref_name, labels, stmt = -1, None, [], []
    for p, w in enumerate(words):
        if w == ";":
            name = stmt[0]
            if stmt[1] == "waves":
                assert name in pronoun_of
            else:
                assert name not in pronoun_of
                pronoun_of[name], color_of[name] = stmt[1], COLORS.index(stmt[2])
                intro_color_pos[name] = p - 1
            if pronoun_of[name] == pron:      # the most recent mention with that pronoun
                ref, ref_name = color_of[name], name
            stmt = []
        elif w != "<bos>":
            stmt.append(w)
        labels.append(ref)
    return Check([(len(words) - 2, COLORS[ref])], {"referent_color": labels}, [intro_color_pos[ref_name]])


def check_brackets(words):
    sep = words.index("<sep>")
    assert sep == len(words) - 2
    stack, expected, depth = [], [], []
    for p, w in enumerate(words):
        if w in OPENS:
            stack.append((OPENS.index(w), p))
        elif w in CLOSES:
            assert stack and stack[-1][0] == CLOSES.index(w), "ill-nested"
            stack.pop()
        else:
            assert w in ("<bos>", "<sep>"), w
        if p == sep:
            answer, innermost = CLOSES[stack[-1][0]], stack[-1][1]
        expected.append(stack[-1][0] if stack else -1)
        depth.append(len(stack))
    return Check([(sep, answer)], {"expected_close": expected, "depth": depth}, [innermost])


def check_copy(words):
    sep = words.index("<sep>")
    prefix = words[:sep]
    assert len(set(prefix)) == len(prefix), "prefix symbols must be distinct"
    src = [-1] * len(words)
    answers = []
    for p in range(sep + 1, len(words) - 1):
        j = prefix.index(words[p])
        src[p] = j + 1
        answers.append((p, prefix[j + 1]))
    return Check(answers, {"copy_source": src}, [src[len(words) - 2]])



def check_word_problems(words):
    assert words[-5] == "?"
    item = words[-2]
    count, order, labels, dis, facts, stmt = {}, [], [], [], [], []
    for p, w in enumerate(words[:-5]):
        if w == "<bos>":
            labels.append([])
            dis.append(0)
            continue
        stmt.append((p, w))
        if w != ";":
            continue
        ws = [x for _, x in stmt]
        who, verb = ws[0], ws[1]
        is_dis = verb == "has" and ws[3] != "+=" and ws[3] != item
        if verb == "has" and ws[3] == "+=":          # who has <base> += n
            count[who] = count[ws[2]] + int(ws[4])
            order.append(who)
            facts.append(stmt[4][0])
        elif verb == "has" and not is_dis:           # who has n item
            count[who] = int(ws[2])
            order.append(who)
            facts.append(stmt[2][0])
        elif verb == "+=":
            assert ws[3] == item
            count[who] += int(ws[2])
            facts.append(stmt[2][0])
        elif verb == "move":
            n = int(ws[2])
            assert count[who] >= n
            count[who] -= n
            if not ws[3].startswith("box"):
                count[ws[3]] += n
            facts.append(stmt[2][0])
        else:
            assert is_dis, ws
        before = labels[-1]
        labels += [before] * (len(stmt) - 1) + [[count[x] for x in order]]
        dis += [int(is_dis)] * len(stmt)
        stmt = []
    assert not stmt
    q = [x for x in words[-4:-2] if x != "_"]
    total = sum(count[x] for x in q)
    labels += [labels[-1]] * 5
    dis += [0] * 5
    n = len(order)
    labels = [row + [-1] * (n - len(row)) for row in labels]
    return Check([(len(words) - 2, str(total))], {"count": labels, "distractor": dis}, facts)


def check_parity(words, modulus):
    sep = words.index("<sep>")
    assert words[0] == "<bos>" and sep == len(words) - 2
    count, running = 0, [-1]
    for w in words[1:sep]:
        assert w in ("0", "1"), w
        count = (count + int(w)) % modulus
        running.append(count)
    running += [count, count]
    return Check([(sep, str(count))], {"running_count": running}, list(range(1, sep)))


def check_multihop(words):
    """Bindings ``a = b ;`` until the first ``?``; the chains they form; the query's chain followed link by link."""
    first_q = words.index("?")
    link, back = {}, {}
    for p in range(1, first_q, 4):
        a, eq, b, semi = words[p:p + 4]
        assert eq == "=" and semi == ";" and a not in link and b not in back, words[p:p + 4]
        link[a], back[b] = b, a
    starts = [a for a in link if a not in back]
    chains = []
    for s in starts:
        chain = [s]
        while chain[-1] in link:
            chain.append(link[chain[-1]])
        chains.append(chain)
    assert sum(len(c) - 1 for c in chains) == len(link), "a cycle"
    hops = len(chains[0]) - 1
    assert all(len(c) - 1 == hops for c in chains), "chains of unequal length"
    q = words[first_q + 1]
    qchain = next(c for c in chains if c[0] == q)
    where = {s: (c[0] == q, j) for c in chains for j, s in enumerate(c)}
    answers, seen = [], set()
    hop_of, on_q, resolved = [], [], []
    for p, w in enumerate(words):
        if w == "is":
            k = sum(1 for x in words[:p] if x == "is") + 1
            answers.append((p, qchain[k]))
        if w == ";" and p < first_q:
            seen.add(words[p - 3])
        on, j = where.get(w, (None, -1))
        hop_of.append(j)
        on_q.append(-1 if on is None else int(on))
        row = [_index(q, "c")] + [-1] * hops
        for j in range(hops):
            if qchain[j] not in seen:
                break
            row[j + 1] = _index(qchain[j + 1], "c")
        resolved.append(row)
    last_q = len(words) - 1 - words[::-1].index("?")
    assert words[last_q + 1] == q
    answers.append((last_q + 1, qchain[-1]))
    facts = [p + 2 for p in range(1, first_q, 4) if words[p] in qchain]
    labels = {"query_hop_value": resolved, "hop_of": hop_of, "on_query_chain": on_q}
    return Check(answers, labels, facts)


check_state_recall_cot = check_state_recall     # the alias: state_recall with cot=True fixed


def check(task, words, modulus=None):
    fn = globals()[f"check_{task}"]
    return fn(words, modulus) if task in ("state_recall", "state_recall_cot", "parity") else fn(words)
