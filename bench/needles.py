"""Planted facts and questions that paraphrase them: retrieval and provenance are
measured by whether the planted sentence comes back. Shared by bench/ and tests/."""

from __future__ import annotations

import random

# Twenty planted facts and questions that paraphrase them (names kept, wording changed).
NEEDLES = [
    ("The harbour master of Kilrush kept exactly forty-two brass telescopes in a locked cedar chest.",
     "How many telescopes did the Kilrush port official store away in a chest?"),
    ("Captain Orla Vance named her racing pigeon Marmalade after the jam her grandmother sold in Galway.",
     "What did Captain Vance call her pigeon, and where did the name come from?"),
    ("In 1723 the parish of Ballybrack forbade the selling of turnips on Sundays after a riot at the market.",
     "Which vegetable could not be sold on the Sabbath in Ballybrack?"),
    ("The chemist Tobias Wren found that copper kettles turned the spring water of Mallow faintly green.",
     "What colour did Mallow's spring water become when Wren boiled it in copper?"),
    ("Every winter solstice the monks of Skellig Rock rang a bell cast from melted silver spoons.",
     "What metal objects were melted down to make the bell of the Skellig monks?"),
    ("The weaver Brigid Lenihan sold a tapestry of a blue heron to the Earl of Clare for ninety guineas.",
     "How much did the Earl of Clare pay for Lenihan's heron tapestry?"),
    ("Doctor Anselm Fitch cured the miller's gout with a poultice of mustard seed and crushed juniper.",
     "What remedy did Dr Fitch apply to treat the miller's gout?"),
    ("The clockmaker of Pemberton Lane built a clock whose cuckoo sang the first bars of a Handel aria.",
     "Which composer's music did the Pemberton Lane cuckoo clock play?"),
    ("Lady Euphemia Crane refused to travel by carriage after her grey mare bolted on Westminster Bridge.",
     "Why would Lady Crane no longer ride in a carriage?"),
    ("The lighthouse on Inishcrone burned whale oil until 1811, when a storm drowned its supply ship.",
     "What fuel did the Inishcrone light use before the supply vessel was lost?"),
    ("A Dutch merchant named Pieter Hals traded four hundred tulip bulbs for a single Arabian stallion.",
     "What did Pieter Hals get in exchange for his tulip bulbs?"),
    ("The village school at Thornbury taught arithmetic using an abacus carved from walnut by the blacksmith.",
     "Who made the walnut counting frame used at the Thornbury school?"),
    ("Colonel Ambrose Tate kept a tame badger that slept each night in his regimental drum.",
     "Where did Colonel Tate's pet badger sleep?"),
    ("The ferry from Rosslare to Fishguard once carried a circus elephant called Jupiter across the sea.",
     "Which animal crossed on the Rosslare to Fishguard boat, and what was it named?"),
    ("Miss Harriet Oddly won the county archery prize three summers running with a bow of yew.",
     "How many years in a row did Harriet Oddly take the archery trophy?"),
    ("The bishop of Cloyne forbade card games in the deanery after losing his mitre at whist.",
     "What did the bishop of Cloyne lose that made him ban cards?"),
    ("On the island of Tory the fishermen painted their boat hulls saffron to ward off seals.",
     "Why were boats on Tory coloured yellow-orange?"),
    ("The astronomer Cecily Marsh catalogued a comet she named after her cat, Bartholomew.",
     "Whom did the astronomer Marsh name her comet after?"),
    ("A baker in Kinsale sold gingerbread shaped like frigates to celebrate the navy's return.",
     "What shape were the Kinsale baker's gingerbread biscuits?"),
    ("The poet Ambrose Kell wrote his sonnets only on the backs of discarded theatre bills.",
     "What paper did Kell use for writing his sonnets?"),
]


def plant(text: str, needles: list[str], rng: random.Random) -> str:
    """Each needle as its own paragraph at a random paragraph break of the body (between
    Gutenberg's START and END lines, which ingestion keeps out of the text)."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    start, end = text.find("*** START OF"), text.find("*** END OF")
    lo, hi = (start if start >= 0 else 0), (end if end >= 0 else len(text))
    breaks = [i for i in range(lo, hi - 1) if text[i : i + 2] == "\n\n"]
    spots = sorted(rng.sample(breaks[2:-2], len(needles)), reverse=True)
    for spot, needle in zip(spots, needles):
        text = text[:spot] + "\n\n" + needle + text[spot:]
    return text


# Ten more whose questions share no rare word with the fact: only meaning links them,
# so keyword search has little to go on and dense retrieval has to carry the hybrid.
PARAPHRASES = [
    ("The harbour pilot refused every bribe, saying his grandmother would haunt him if he lied to the tide.",
     "Which sailor turned down payments because he feared a ghost of his family?"),
    ("A widow in the valley kept forty beehives and paid her rent each autumn entirely in honey.",
     "How did the woman whose husband died settle what she owed her landlord?"),
    ("The regiment's drummer boy learned to read from the labels on crates of gunpowder.",
     "Where did the young military musician pick up his literacy?"),
    ("The innkeeper chalked the debts of every guest on the back of the cellar door.",
     "Where did the owner of the lodging house keep his record of what customers owed?"),
    ("Every spring the shepherds burned juniper on the hillside to drive off fever.",
     "What did the people who tended flocks set alight each year to keep sickness away?"),
    ("The lighthouse keeper's daughter rowed out alone in the gale and saved eleven fishermen.",
     "Who rescued the crew of the fishing boats during the storm?"),
    ("A traveling dentist pulled teeth in the market square while a fiddler played to drown the screams.",
     "Why was there music while the itinerant tooth-puller worked in public?"),
    ("The old schoolmaster planted an oak for every pupil who left the village to study at a university.",
     "What did the teacher do to honour children who went on to higher education?"),
    ("The mayor's horse was shod with silver on the day the new bridge opened.",
     "What precious metal went on the town leader's mount for the ceremony?"),
    ("Smugglers hid brandy in hollowed loaves of bread carried openly past the customs house.",
     "How was contraband spirit concealed from the excise officers?"),
]


# Held out: written after the fusion methods were compared on the sets above, and used
# once to choose between them (planted in four other books, top-5 hit rate, names /
# paraphrases: dense 0.90/0.10, keyword 1.00/0.10, RRF 1.00/0.10, relative score
# 1.00/0.10 -- a tie, so RRF stayed the default). Half keep names, half are paraphrases.
HELD_OUT = [
    ("The cartographer Silas Penhallow drew the coast of Tintagel with ink made from cuttlefish.",
     "What did Penhallow make the ink for his Tintagel map from?"),
    ("Mrs Agatha Quill bred a blue-eyed spaniel named Pepperpot that won the Bath dog show twice.",
     "How many times did Agatha Quill's dog Pepperpot win at Bath?"),
    ("The abbey of Glenmorran brewed a dark ale flavoured with heather and bog myrtle.",
     "Which plants flavoured the ale of the Glenmorran monks?"),
    ("Sergeant Dunstan Pike arrested a highwayman in Hounslow while wearing his nightshirt.",
     "What was Sergeant Pike dressed in when he caught the Hounslow robber?"),
    ("The glassblower of Murano Street made a chandelier with three hundred crystal swallows.",
     "How many glass birds hung from the chandelier of the Murano Street glassblower?"),
    ("Professor Lavinia Stroud kept her lecture notes in a biscuit tin painted with violets.",
     "What container held Professor Stroud's notes?"),
    ("The Wexford regatta of 1802 was won by a rowing crew of seven sisters named Doyle.",
     "Who took first place at the Wexford boat race in 1802?"),
    ("Old Jasper Moss carved every gravestone in Ashcombe churchyard for forty years.",
     "Which craftsman made the headstones in the Ashcombe burial ground?"),
    ("The Duchess of Morland fed her peacocks candied almonds from a silver dish.",
     "What treat did the Duchess of Morland give her peacocks?"),
    ("Captain Theodore Finch navigated to Madeira using only a pocket watch and a sextant.",
     "Which instruments did Captain Finch rely on to reach Madeira?"),
    ("A shepherd found a Roman coin hoard when his dog chased a rabbit into a collapsed wall.",
     "How was the buried treasure of ancient money discovered?"),
    ("The seamstress sewed a map of the escape route into the lining of the soldier's coat.",
     "Where were the directions for fleeing hidden?"),
    ("Every evening the blind organist played hymns for the sailors' widows by candlelight.",
     "Who performed sacred music for women who had lost husbands at sea?"),
    ("The orphanage paid its coal bills by selling the lace the girls made each winter.",
     "How did the children's home afford fuel for heating?"),
    ("The apothecary's parrot warned customers away from the poisons shelf in Latin.",
     "What did the chemist's talking bird do to protect buyers?"),
    ("Wolves followed the mail coach across the moor until the guard fired his blunderbuss.",
     "What drove off the animals pursuing the post carriage?"),
    ("The miller's wife baked her wedding ring into a loaf by accident and found it a year later.",
     "How did the woman at the flour mill lose her marriage band?"),
    ("At the fair a conjurer made a goose vanish from a basket and reappear on the vicar's hat.",
     "Where did the magician's bird turn up after it disappeared?"),
    ("The bell ringers of the cathedral practised in silence by tying cloth around the clappers.",
     "How did the church's ringers rehearse without making noise?"),
    ("A fisherman's boy swam the estuary at night to fetch the doctor for his sick mother.",
     "How did the child get medical help for his parent?"),
]
