"""Every surface form the world's texts use: questions, binding statements, caption styles.

Words are separated by spaces (punctuation too), so the word-level tokenizer reads them one token each.
`{d}` is an object description ("red circle"), `{n}` a made-up name.
"""

from __future__ import annotations

# corpus 1: single-image questions (prompt, answer) over the scene's attributes
QUESTIONS = {
    "colour": (
        ("what colour is it ?", "{colour} ."),
        ("which colour ?", "{colour} ."),
        ("colour :", "{colour} ."),
    ),
    "shape": (("what shape is it ?", "{shape} ."), ("which shape ?", "{shape} ."), ("shape :", "{shape} .")),
    "size": (
        ("is it small or large ?", "{size} ."),
        ("what size is it ?", "{size} ."),
        ("size :", "{size} ."),
    ),
    "position": (("where is it ?", "on the {position} ."), ("which side is it on ?", "{position} .")),
    "object": (("what is this ?", "a {colour} {shape} ."), ("what do you see ?", "a {colour} {shape} .")),
    "caption": (("describe the image .", "{caption} ."), ("caption :", "{caption} .")),
}
YES_NO = ("is it {value} ?", "{answer} .")

# corpora 2 and 3: ways to bind a name to a described object, short ones included (the frozen LM only reads
# binding evidence in formats it was trained on, and fused tokens are as short as the demo's own text)
BINDINGS = (
    "a {d} . this is a {n} .",
    "this {d} is a {n} .",
    "the {d} is called {n} .",
    "{n} is a {d} .",
    "here is a {d} . it is a {n} .",
    "a {d} named {n} .",
    "we call the {d} {n} .",
    "{n} , the {d} .",
    "{d} : {n} .",
    "{n} : {d} .",
    "{d} = {n} .",
    "{d} {n} .",
    "{n} {d} .",
    "{d} is {n} .",
)
# later references in text-only documents: (prompt, answer)
RECALLS = (
    ("the {d} is a", "{n} ."),
    ("the {d} is called", "{n} ."),
    ("{d} :", "{n} ."),
    ("which one is the {d} ? the", "{n} ."),
    ("{n} is a", "{d} ."),
    ("what is a {n} ? a", "{d} ."),
)
# corpus 3 and the fast-binding task: the image, then a query for its name
NAME_QUERIES = ("this is a", "this is a", "this is a", "it is a", "its name is", "name :")
NAME_QUERY = "this is a"
NAME_DEMO = "this is a {n} ."

# caption styles (corpus 3 teaches reading a style off examples; the caption-style task tests it)
CAPTION_STYLES = {
    "full": "a {size} {colour} {shape} on the {position} .",
    "colour-shape": "{colour} {shape} .",
    "shape-colour": "{shape} , {colour} .",
    "shape": "{shape} .",
    "colour": "{colour} .",
    "size-shape": "{size} {shape} .",
    "where": "{shape} on the {position} .",
    "colour-size": "it is {colour} and {size} .",
}
CAPTION_PROMPT = "caption :"

# copying documents kick-start in-context copying
COPIES = ("{s} . {s} .", "copy : {s} . again : {s} .", "{s} ; {s} ;", "list : {s} . repeat : {s} .")

FILLER = ("and", "then", "also", "next", "so")  # joins statements in text-only documents
