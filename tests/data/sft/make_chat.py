"""Writes tests/data/sft/chat.jsonl: 42 small hand-written multi-turn conversations.

Source roles are `system`, `human` and `gpt` (the apply-chat-template configs map them to System, User, Assistant).
The text never contains the loss-masking marker characters `^` and `$`. Deterministic: no randomness.

    python tests/data/sft/make_chat.py
"""

import json
from pathlib import Path

S, H, G = "system", "human", "gpt"

LONG_QUESTION = (
    "Ich schreibe gerade einen langen Bericht über die Geschichte der Eisenbahn in Europa, von den ersten "
    "Dampflokomotiven in England über die großen Strecken durch die Alpen bis zu den modernen "
    "Hochgeschwindigkeitszügen in Frankreich, Spanien und Deutschland, und ich möchte wissen, welche drei "
    "Ereignisse du für die wichtigsten hältst und warum."
)

CONVERSATIONS = [
    # 0-11: short, one exchange (padded to 65 tokens)
    [(H, "Hi!"), (G, "Hallo! 🙂")],
    [(H, "Wie geht's?"), (G, "Gut, danke. Und dir?")],
    [(H, "Merci beaucoup !"), (G, "De rien, à bientôt.")],
    [(H, "你好"), (G, "你好！有什么可以帮你的？")],
    [(H, "What is 2 + 2?"), (G, "4.")],
    [(S, "Answer in one word."), (H, "Colour of the sky?"), (G, "Blue.")],
    [(H, "Say hello in Hebrew."), (G, "שלום")],
    [(H, "Übersetze: cat"), (G, "Katze.")],
    [(H, "Ping"), (G, "Pong 🏓")],
    [(S, "Sei kurz."), (H, "Hauptstadt von Österreich?"), (G, "Wien.")],
    [(H, "Où est la gare ?"), (G, "Tout droit, puis à gauche.")],
    [(H, "مرحبا"), (G, "مرحبا! كيف حالك؟")],
    # 12-25: two exchanges (some fit, some just overflow)
    [(H, "Hi"), (G, "Hello!"), (H, "Bye"), (G, "Goodbye!")],
    [(H, "Zähle bis drei."), (G, "Eins, zwei, drei."), (H, "Und rückwärts?"), (G, "Drei, zwei, eins.")],
    [(H, "Name a fruit."), (G, "Apple."), (H, "Another one?"), (G, "Pear.")],
    [(S, "Réponds en français."), (H, "Bonjour"), (G, "Bonjour ! Ça va ?"), (H, "Oui."), (G, "Très bien.")],
    [(H, "日本の首都は？"), (G, "東京です。"), (H, "ありがとう"), (G, "どういたしまして 😊")],
    [(H, "Is water wet?"), (G, "It makes other things wet."), (H, "Hm."), (G, "Indeed.")],
    [
        (H, "Give me a short tip for learning German."),
        (G, "Read children's books: Märchen are short and use everyday words."),
        (H, "Any other tip?"),
        (G, "Label things in your flat: der Tisch, die Tür, das Fenster."),
    ],
    [(H, "Translate 'peace' to Hebrew."), (G, "שלום (shalom)."), (H, "And to Arabic?"), (G, "سلام (salam).")],
    [(H, "3 * 7?"), (G, "21."), (H, "Plus 1?"), (G, "22.")],
    [
        (S, "You are terse."),
        (H, "Describe the sea."),
        (G, "Big, blue, salty."),
        (H, "And the desert?"),
        (G, "Dry, hot, quiet."),
    ],
    [(H, "Café or tea?"), (G, "Café au lait, s'il vous plaît."), (H, "Why?"), (G, "It is crème de la crème.")],
    [(H, "Tell me a colour."), (G, "Grün."), (H, "In English?"), (G, "Green.")],
    [
        (H, "What does 'Gemütlichkeit' mean?"),
        (G, "A warm, cosy, friendly feeling, like a Stube in winter."),
        (H, "Is there an English word for it?"),
        (G, "Not exactly; 'cosiness' comes close."),
    ],
    [(H, "Spell 'naïve'."), (G, "n-a-ï-v-e."), (H, "And 'façade'?"), (G, "f-a-ç-a-d-e.")],
    # 26-35: three or four exchanges (truncated at 65 tokens)
    [
        (H, "Let's plan a trip to Zürich."),
        (G, "Gern! When do you want to go, and for how many days?"),
        (H, "In May, for three days."),
        (G, "Then visit the Altstadt, take a boat on the lake and ride up the Üetliberg."),
        (H, "What should I eat?"),
        (G, "Try Zürcher Geschnetzeltes with Rösti, and Läckerli for dessert."),
    ],
    [
        (S, "Du bist ein geduldiger Mathelehrer."),
        (H, "Was ist eine Primzahl?"),
        (G, "Eine natürliche Zahl größer als eins, die nur durch eins und sich selbst teilbar ist."),
        (H, "Ist 9 eine Primzahl?"),
        (G, "Nein, denn 9 = 3 × 3."),
        (H, "Und 11?"),
        (G, "Ja, 11 ist eine Primzahl."),
    ],
    [
        (H, "Teach me three words of Chinese."),
        (G, "水 (shuǐ) means water, 火 (huǒ) means fire, 山 (shān) means mountain."),
        (H, "How do I say thank you?"),
        (G, "谢谢 (xièxie)."),
        (H, "And goodbye?"),
        (G, "再见 (zàijiàn) 👋"),
    ],
    [
        (H, "Write a haiku about autumn."),
        (G, "Red leaves drift and fall / the river carries them home / cold wind hums softly"),
        (H, "Now one about winter."),
        (G, "White hush on the hills / a crow writes on the new snow / then the sky erases"),
        (H, "Thanks!"),
        (G, "You're welcome ❄️"),
    ],
    [
        (S, "Réponds toujours poliment."),
        (H, "Pourquoi le ciel est-il bleu ?"),
        (G, "La lumière bleue est davantage diffusée par l'atmosphère que la lumière rouge."),
        (H, "Et le coucher du soleil ?"),
        (G, "La lumière traverse plus d'air, le bleu est dispersé et il reste l'orange et le rouge."),
    ],
    [
        (H, "How do I boil an egg?"),
        (G, "Put it in boiling water for seven minutes, then cool it in cold water."),
        (H, "Soft or hard?"),
        (G, "Seven minutes gives a jammy yolk; ten gives a hard one."),
        (H, "Salt?"),
        (G, "A pinch in the water is fine."),
        (H, "Great."),
        (G, "Guten Appetit!"),
    ],
    [
        (H, "Explain recursion briefly."),
        (G, "A function that calls itself on a smaller problem until it reaches a base case."),
        (H, "Example?"),
        (G, "Factorial: n! = n × (n − 1)! with 0! = 1."),
        (H, "And in Hebrew the word is?"),
        (G, "רקורסיה"),
    ],
    [
        (H, "Was ist der Unterschied zwischen 'das' und 'dass'?"),
        (G, "'Das' ist Artikel oder Pronomen, 'dass' ist eine Konjunktion."),
        (H, "Ein Beispiel bitte."),
        (G, "Ich weiß, dass das Buch gut ist."),
        (H, "Danke schön!"),
        (G, "Gern geschehen 😊"),
    ],
    [
        (S, "You only answer with lists."),
        (H, "Name four seasons."),
        (G, "1. Spring 2. Summer 3. Autumn 4. Winter"),
        (H, "In French?"),
        (G, "1. Printemps 2. Été 3. Automne 4. Hiver"),
        (H, "In Japanese?"),
        (G, "1. 春 2. 夏 3. 秋 4. 冬"),
    ],
    [
        (H, "Tell me a story in one sentence."),
        (G, "A small robot learned to paint and filled the grey city with colour."),
        (H, "Make it sadder."),
        (G, "The rain washed every painting away before anyone saw them."),
        (H, "Make it happy again."),
        (G, "But the children remembered, and painted the walls again the next morning 🎨"),
    ],
    # 36-37: the first user turn alone runs past max_length (no begin marker within the first 65 tokens)
    [
        (S, "Antworte ausführlich."),
        (H, LONG_QUESTION),
        (G, "Die Eröffnung der ersten Strecke, der Gotthard und der TGV."),
    ],
    [(H, LONG_QUESTION), (G, "Stephenson, der Semmering und der Shinkansen-Effekt in Europa.")],
    # 38-39: short again
    [(H, "Ok?"), (G, "Ok.")],
    [(S, "Be brief."), (H, "Emoji for fire?"), (G, "🔥")],
    # 40: chat text is exactly 65 tokens (neither padded nor truncated, so packing appends an eod: 66)
    [(H, "Quelle heure est-il à Tokyo quand il est midi à Paris ?"), (G, "Il est 20 h, et 19 h en été.")],
    # 41: chat text is 66 tokens; truncation to 65 cuts only the final end marker, leaving <|endoftext|> last (65)
    [(H, "Quelle heure est-il à Tokyo quand il est midi à Paris ?"), (G, "Il est 20 h à Tokyo, 19 h l'été.")],
]


def main() -> None:
    out = Path(__file__).with_name("chat.jsonl")
    with out.open("w", encoding="utf-8") as f:
        for i, conv in enumerate(CONVERSATIONS):
            for _, text in conv:
                assert "^" not in text and "$" not in text and "\n" not in text, (i, text)
            messages = [{"role": role, "content": text} for role, text in conv]
            f.write(json.dumps({"id": i, "messages": messages}, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
