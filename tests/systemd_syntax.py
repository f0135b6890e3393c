"""systemd's parsing rules, re-implemented for the tests from systemd's sources, so a test can read back the
values a written unit or environment file gives the k0s process (no systemd runs as PID 1 here).

- env_file(): src/basic/env-file.c, parse_env_file_internal (EnvironmentFile=): PRE_KEY/KEY/PRE_VALUE/VALUE,
  single quotes literal, double quotes with backslash only before one of `"\\$` + "`" (SHELL_NEED_ESCAPE), a
  quote closing back to PRE_VALUE, unquoted trailing whitespace chomped, no expansion.
- unit_words(): a unit line's value after specifier expansion (only %% -> % is allowed here) split like
  extract_first_word(EXTRACT_UNQUOTE | EXTRACT_CUNESCAPE) in src/basic/extract-word.c; exec_words() then
  applies ExecStart='s variable rule, where "$$" is a literal "$" (systemd.service(5), "Command lines").
"""
import re

_C_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", "\\": "\\",
              '"': '"', "'": "'", "s": " "}


def env_file(text):
    """{name: value} as systemd's EnvironmentFile= reads ``text``."""
    out, i, n = {}, 0, len(text)
    while i < n:
        while i < n and text[i] in " \t\n\r":
            i += 1
        if i >= n:
            break
        if text[i] in "#;":
            while i < n and text[i] != "\n":
                i += 1
            continue
        j = text.index("=", i)
        key = text[i:j].strip()
        assert "\n" not in key, key
        i, value, chomp = j + 1, [], None
        while i < n and text[i] in " \t":   # PRE_VALUE skips whitespace
            i += 1
        state = "pre"
        while i < n and not (state in ("pre", "value") and text[i] == "\n"):
            c = text[i]
            if state in ("pre",) and c == "'":
                k = text.index("'", i + 1)
                value.append(text[i + 1:k])
                i = k + 1
                continue
            if state == "pre" and c == '"':
                i += 1
                while text[i] != '"':
                    if text[i] == "\\":
                        nxt = text[i + 1]
                        value.append(nxt if nxt in '"\\`$' else ("" if nxt == "\n" else "\\" + nxt))
                        i += 2
                        continue
                    value.append(text[i])
                    i += 1
                i += 1
                continue
            if state == "pre" and c in " \t":
                i += 1
                continue
            state = "value"   # unquoted: quotes are literal from here on, backslash escapes one character
            if c == "\\":
                if text[i + 1] != "\n":
                    value.append(text[i + 1])
                i += 2
                chomp = None
                continue
            if c in " \t":
                chomp = len("".join(value)) if chomp is None else chomp
            else:
                chomp = None
            value.append(c)
            i += 1
        joined = "".join(value)
        out[key] = joined[:chomp] if (state == "value" and chomp is not None) else joined
    return out


def unit_words(value):
    """Words of a unit setting's value (Environment=, ExecStart=) after %% -> %, quotes and C escapes."""
    assert not re.search(r"%[^%]", value.replace("%%", "")), "unexpected specifier in %r" % value
    value = value.replace("%%", "\0")   # keep literal % apart from the splitting
    words, i, n = [], 0, len(value)
    while True:
        while i < n and value[i] in " \t":
            i += 1
        if i >= n:
            return [w.replace("\0", "%") for w in words]
        word = []
        while i < n and value[i] not in " \t":
            c = value[i]
            if c in "\"'":
                i += 1
                while value[i] != c:
                    if value[i] == "\\":
                        word.append(_C_ESCAPES[value[i + 1]])
                        i += 2
                    else:
                        word.append(value[i])
                        i += 1
                i += 1
            elif c == "\\":
                word.append(_C_ESCAPES[value[i + 1]])
                i += 2
            else:
                word.append(c)
                i += 1
        words.append("".join(word))


def exec_words(value):
    """ExecStart= argv: unit_words, then "$$" -> "$" (a lone $NAME would be expanded: refused here)."""
    out = []
    for word in unit_words(value):
        assert not re.search(r"\$[^$]|\$$", word.replace("$$", "")), "variable expansion in %r" % word
        out.append(word.replace("$$", "$"))
    return out
