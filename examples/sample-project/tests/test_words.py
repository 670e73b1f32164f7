import unittest

from textkit.words import title_case, word_count


class WordsTest(unittest.TestCase):
    def test_word_count(self) -> None:
        self.assertEqual(word_count("the quick brown fox"), 4)
        self.assertEqual(word_count(""), 0)

    def test_title_case(self) -> None:
        self.assertEqual(title_case("hello world"), "Hello World")


if __name__ == "__main__":
    unittest.main()
