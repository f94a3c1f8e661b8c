"""Shell completion scripts, generated from the argparse parser itself (so they
never drift from the commands): ``pxo completion bash`` / ``pxo completion zsh``."""

from __future__ import annotations

import argparse


def _tree(parser: argparse.ArgumentParser, path: str = "") -> dict[str, tuple[list[str], dict[str, list[str]]]]:
    """For each command path ("", "query", "keys create"...): its words (subcommands and
    options) and, per option, the values it accepts."""
    words: list[str] = []
    choices: dict[str, list[str]] = {}
    children: dict[str, tuple[list[str], dict[str, list[str]]]] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                words.append(name)
                children.update(_tree(sub, f"{path} {name}".strip()))
        elif action.option_strings:
            words.extend(o for o in action.option_strings if o.startswith("--") or o in ("-o",))
            if action.choices:
                for o in action.option_strings:
                    choices[o] = [str(c) for c in action.choices]
        elif action.choices:
            words.extend(str(c) for c in action.choices)
    return {path: (words, choices), **children}


def script(parser: argparse.ArgumentParser, shell: str) -> str:
    tree = _tree(parser)
    cases = []
    for path, (words, choices) in sorted(tree.items()):
        opt_cases = "".join(f'                {o}) COMPREPLY=($(compgen -W "{" ".join(v)}" -- "$cur")); return;;\n'
                            for o, v in choices.items())
        cases.append(f'        "{path}")\n'
                     f'            case "$prev" in\n{opt_cases}            esac\n'
                     f'            words="{" ".join(words)}";;\n')
    bash = f"""# pxo bash completion: source <(pxo completion bash)
_pxo() {{
    local cur prev path="" words="" i w
    cur="${{COMP_WORDS[COMP_CWORD]}}"
    prev="${{COMP_WORDS[COMP_CWORD-1]}}"
    for ((i = 1; i < COMP_CWORD; i++)); do
        w="${{COMP_WORDS[i]}}"
        case "$w" in -*) continue;; esac
        case " $(_pxo_words "$path") " in *" $w "*) path="${{path:+$path }}$w";; esac
    done
    _pxo_words "$path" >/dev/null
    case "$path" in
{"".join(cases)}    esac
    COMPREPLY=($(compgen -W "$words" -- "$cur"))
}}
_pxo_words() {{
    case "$1" in
{"".join(f'        "{p}") echo "{" ".join(w)}";;{chr(10)}' for p, (w, _) in sorted(tree.items()))}    esac
}}
complete -F _pxo pxo
"""
    if shell == "bash":
        return bash
    return "#compdef pxo\n# pxo zsh completion (bash's, through bashcompinit): source <(pxo completion zsh)\n" \
           "autoload -U +X bashcompinit && bashcompinit\n" + bash.split("\n", 1)[1]
