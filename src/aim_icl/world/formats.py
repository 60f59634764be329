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
# binding evidence in formats it was trained on, and fused tokens are as short as the demo's own text). The name
# always follows the description directly: a 4-layer LM learns to look a name up by the word before it within a few
# hundred steps, while through a connector ("the {d} is called {n}") it did not learn it in 3,000 (measured).
BINDINGS = (
    "{d} {n} .",
    "a {d} {n} .",
    "the {d} {n} .",
    "this {d} {n} .",
    "one {d} {n} .",
    "here is a {d} {n} .",
    "we call this {d} {n} .",
    "look : a {d} {n} .",
    "there is a {d} {n} .",
    "and a {d} {n} .",
)
# later references in text-only documents: (prompt, answer); the prompt ends with the description
RECALLS = (
    ("the {d}", "{n} ."),
    ("{d}", "{n} ."),
    ("a {d}", "{n} ."),
    ("which one is the {d} ? the {d}", "{n} ."),
    ("so the {d}", "{n} ."),
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
