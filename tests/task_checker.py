"""Independent checker: recompute every task's answers and labels from the decoded words alone.
Deliberately shares no code with interp/tasks (only the word spellings)."""
import itertools


def num(w):
    return int(w)


def mqar(words):
    sep = words.index("<sep>")
    bound, ctx_pos = {}, {}
    lab = {"bound_value": [-1] * len(words), "write_distance": [-1] * len(words)}
    for p in range(1, sep):
        if words[p].startswith("k"):
            bound[words[p]] = num(words[p + 1])
            ctx_pos[words[p]] = p
            lab["bound_value"][p] = bound[words[p]]
    answers = []
    for p in range(sep + 1, len(words), 2):
        lab["bound_value"][p] = bound[words[p]]
        lab["write_distance"][p] = p - ctx_pos[words[p]]
        answers.append((p, str(bound[words[p]])))
    return answers, lab


def state_recall(words, n_vars, modulus):
    last_q = len(words) - 1 - words[::-1].index("?")
    qvar = words[last_q + 1]
    vals, var_value, qv, since = {}, [], [], []
    n_stmt, last_write, buf, answers = 0, None, [], []
    for p, w in enumerate(words):
        prev = words[p - 1] if p else None
        if w == ";":
            if buf and buf[0] != "?":
                if buf[0] == "swap":
                    vals[buf[1]], vals[buf[2]] = vals[buf[2]], vals[buf[1]]
                    touched = qvar in buf[1:3]
                elif buf[1] == "=":
                    vals[buf[0]] = vals[buf[2]] if buf[2].startswith("x") else num(buf[2])
                    touched = buf[0] == qvar
                else:  # +=
                    vals[buf[0]] = (vals[buf[0]] + num(buf[2])) % modulus
                    touched = buf[0] == qvar
                n_stmt += 1
                if touched:
                    last_write = n_stmt
            buf = []
        elif w == "is":
            answers.append((p, str(vals[qvar])))
        elif w != "<bos>" and prev != "is":
            buf.append(w)
        var_value.append([vals.get(f"x{j}", -1) for j in range(n_vars)])
        qv.append(vals.get(qvar, -1))
        since.append(-1 if last_write is None else n_stmt - last_write)
    answers.append((last_q + 1, str(vals[qvar])))
    return answers, {"var_value": var_value, "query_var_value": qv, "steps_since_write": since}


def permutation(words):
    sep = words.index("<sep>")
    n = 3 if words[1].startswith("p3_") else 5
    elems = list(itertools.permutations(range(n)))
    r, run = tuple(range(n)), [-1]
    for w in words[1:sep]:
        p = tuple(int(c) for c in w.split("_")[1])
        r = tuple(p[r[i]] for i in range(n))
        run.append(elems.index(r))
    run += [elems.index(r)] * (len(words) - sep)
    return [(sep, f"p{n}_" + "".join(map(str, r)))], {"running_product": run}


def entity_tracking(words, n_objects):
    order, where = [], {}
    lab = []
    stmt = []
    for w in words:
        if w == ";":
            if stmt[0] == "move":
                where[stmt[1]] = int(stmt[2][3:])
            else:
                order.append(stmt[0])
                where[stmt[0]] = int(stmt[2][3:])
            stmt = []
        elif w != "<bos>":
            stmt.append(w)
        lab.append([where.get(o, -1) for o in order] + [-1] * (n_objects - len(order)))
    q = words[-3]
    return [(len(words) - 2, f"box{where[q]}")], {"box_of": lab}


def pronoun(words):
    q = words[-4]
    gender, color, ref = {}, {}, -1
    colors = ["red", "blue", "green", "yellow", "black", "white", "pink", "brown", "gray", "orange",
              "purple", "gold", "silver", "teal", "navy", "olive"]
    lab, stmt = [], []
    for w in words:
        if w == ";":
            name = stmt[0]
            if stmt[1] in ("he", "she"):
                gender[name], color[name] = stmt[1], colors.index(stmt[2])
            if gender[name] == q:
                ref = color[name]
            stmt = []
        elif w != "<bos>":
            stmt.append(w)
        lab.append(ref)
    return [(len(words) - 2, colors[ref])], {"referent_color": lab}


def brackets(words):
    opens, closes = "([{<", ")]}>"
    stack, exp, dep = [], [-1], [0]
    for w in words[1:-1]:
        if w in opens:
            stack.append(opens.index(w))
        elif w in closes:
            assert stack and stack[-1] == closes.index(w), "ill-nested"
            stack.pop()
        exp.append(stack[-1] if stack else -1)
        dep.append(len(stack))
    exp.append(-1)
    dep.append(len(stack))
    return [(len(words) - 2, closes[stack[-1]])], {"expected_close": exp, "depth": dep}


def copy(words):
    sep = words.index("<sep>")
    prefix = words[:sep]
    src = [-1] * len(words)
    answers = []
    for p in range(sep + 1, len(words) - 1):
        j = prefix.index(words[p])
        src[p] = j + 1
        answers.append((p, prefix[j + 1]))
    return answers, {"copy_source": src}
