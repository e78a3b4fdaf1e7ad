/// A deterministic mixed-script text for the tokenizer benchmark: prose fragments in nine scripts,
/// code, numbers of every length, emoji sequences and whitespace runs, drawn by a fixed generator so
/// every run (and the `tokenizers` peer) encodes the same bytes.
public enum MixedText {
    static let fragments: [String] = [
        "The quick brown fox jumps over the lazy dog.", "Tokenizers split text into pieces before merging bytes.",
        "Ça va très bien, merci!", "Grüße aus München, schöne Straße.", "Él está en la ciudad de México.",
        "我们今天去北京大学参观图书馆。", "机器学习模型需要大量的训练数据。", "日本語のテキストとカタカナ、ひらがなの混在。",
        "東京タワーに行きました。", "한국어 문장입니다. 안녕하세요!", "مرحبا بالعالم، هذا نص عربي للاختبار.",
        "नमस्ते दुनिया, यह हिंदी पाठ है।", "Ελληνικά κείμενο για δοκιμή.", "Кириллица: съешь же ещё этих мягких булок.",
        "עברית טקסט לבדיקה.", "e\u{301}te\u{301} cafe\u{301} n\u{303}", "👩‍👩‍👧‍👦 👍🏽 🏳️‍🌈 🧑🏿‍💻 ✨",
        "def f(x):\n    return x * 2  # double\n", "for (int i = 0; i < n; ++i) { sum += a[i]; }", "<div class=\"row\">&nbsp;</div>",
        "let v = map.get(&key).unwrap_or(0);", "SELECT id, name FROM users WHERE age > 30;", "\t\tindent\twith\ttabs",
        "line one\r\nline two\r\n", "   spaced   out   ", "\n\n", "１２３ ①② ١٢٣ ०१२",
    ]

    /// About `byteCount` bytes of text (whole fragments; the last one may pass the mark).
    public static func generate(byteCount: Int, seed: UInt64 = 0x5EED) -> [UInt8] {
        var state = seed
        func next(_ bound: Int) -> Int {
            state = state &* 6364136223846793005 &+ 1442695040888963407
            return Int((state >> 33) % UInt64(bound))
        }
        var out: [UInt8] = []
        out.reserveCapacity(byteCount + 256)
        while out.count < byteCount {
            switch next(10) {
            case 0: out += Array(String(next(1 << (1 + next(30)))).utf8)
            case 1: out += Array(String((0..<(1 + next(8))).map { _ in Character(Unicode.Scalar(UInt32(0x4E00 + next(0x51A5)))!) }).utf8)
            case 2: out += Array(String((0..<(2 + next(10))).map { _ in Character(Unicode.Scalar(UInt32(0x61 + next(26)))!) }).utf8)
            default: out += Array(fragments[next(fragments.count)].utf8)
            }
            out += Array([" ", " ", " ", "\n", ", ", "  "][next(6)].utf8)
        }
        return out
    }
}
