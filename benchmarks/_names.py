"""Name, place and e-mail tables for benchmarks/match.py's synthetic prospects.

Weights are rough US frequencies (per 100,000 people); nicknames pair a given name with
the short forms people write on forms.
"""

from __future__ import annotations


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


# fmt: off
MALE = ("James 332 John 327 Robert 314 Michael 263 William 245 David 236 Richard 170 Charles 152 "
        "Joseph 140 Thomas 138 Christopher 104 Daniel 97 Paul 89 Mark 88 Donald 88 George 86 "
        "Kenneth 83 Steven 78 Edward 77 Brian 74 Ronald 73 Anthony 72 Kevin 67 Jason 66 "
        "Matthew 66 Gary 65 Timothy 64 Jose 61 Larry 60 Jeffrey 59 Frank 58 Scott 55 Eric 54 "
        "Stephen 54 Andrew 54 Raymond 53 Gregory 44 Joshua 44 Jerry 43 Dennis 42 Walter 42 "
        "Patrick 42 Peter 41 Harold 37 Douglas 37 Henry 37 Carl 35 Arthur 35 Ryan 33 Roger 33 "
        "Juan 32 Jack 32 Albert 32 Jonathan 32 Justin 31 Terry 31 Gerald 31 Keith 31 Samuel 31 "
        "Ralph 30 Lawrence 30 Nicholas 30 Roy 30 Benjamin 29 Bruce 28 Brandon 28 Adam 28 "
        "Fred 28 Wayne 28 Billy 27 Louis 27 Jeremy 27 Aaron 26 Randy 25 Howard 25 Eugene 25 "
        "Carlos 25 Russell 25 Bobby 25 Victor 24 Martin 24 Todd 24 Jesse 24 Craig 24 Alan 23 "
        "Shawn 23 Sean 23 Philip 23 Earl 23 Jimmy 22 Antonio 22 Luis 21 Mike 21 Dale 20")
FEMALE = ("Mary 263 Patricia 107 Linda 104 Barbara 98 Elizabeth 94 Jennifer 93 Maria 84 Susan 79 "
          "Margaret 77 Dorothy 73 Lisa 70 Nancy 67 Karen 67 Betty 67 Helen 66 Sandra 63 "
          "Donna 58 Carol 58 Ruth 56 Sharon 56 Michelle 53 Laura 51 Sarah 51 Kimberly 50 "
          "Deborah 49 Jessica 49 Shirley 48 Cynthia 47 Angela 47 Melissa 46 Brenda 46 Amy 45 "
          "Anna 44 Rebecca 43 Virginia 43 Kathleen 42 Pamela 42 Martha 42 Debra 41 Amanda 41 "
          "Stephanie 40 Carolyn 39 Christine 38 Marie 38 Janet 37 Catherine 37 Frances 37 "
          "Ann 36 Joyce 36 Diane 36 Alice 36 Julie 35 Heather 34 Teresa 34 Doris 33 Gloria 33 "
          "Evelyn 32 Jean 32 Cheryl 32 Katherine 31 Joan 31 Ashley 30 Judith 30 Rose 30 "
          "Janice 29 Kelly 29 Nicole 28 Judy 28 Christina 28 Kathy 27 Theresa 27 Beverly 27 "
          "Denise 27 Tammy 26 Irene 25 Jane 25 Lori 25 Rachel 25 Marilyn 25 Andrea 24 "
          "Louise 24 Sara 24 Jacqueline 24 Wanda 24 Bonnie 24 Julia 23 Ruby 23 Lois 23 Tina 22 "
          "Norma 22 Paula 22 Diana 22 Emily 21 Robin 21 Roberta 12 Danielle 18")
SURNAMES = ("Smith 828 Johnson 662 Williams 550 Brown 488 Jones 481 Miller 384 Davis 380 "
            "Garcia 316 Rodriguez 306 Wilson 301 Martinez 298 Anderson 274 Taylor 260 Thomas 260 "
            "Hernandez 251 Moore 245 Martin 238 Jackson 237 Thompson 233 White 233 Lopez 220 "
            "Lee 217 Gonzalez 208 Harris 203 Clark 197 Lewis 189 Robinson 187 Walker 186 "
            "Perez 178 Hall 176 Young 174 Allen 172 Sanchez 164 Wright 163 King 159 Scott 150 "
            "Green 149 Baker 147 Adams 146 Nelson 146 Hill 145 Ramirez 142 Campbell 134 "
            "Mitchell 133 Roberts 132 Carter 131 Phillips 129 Evans 129 Turner 128 Torres 123 "
            "Parker 117 Collins 116 Edwards 116 Stewart 115 Flores 115 Morris 115 Nguyen 113 "
            "Murphy 113 Rivera 112 Cook 111 Rogers 110 Morgan 103 Peterson 102 Cooper 101 "
            "Reed 100 Bailey 99 Bell 99 Gomez 98 Kelly 98 Howard 95 Ward 95 Cox 94 Diaz 94 "
            "Richardson 92 Wood 92 Watson 91 Brooks 91 Bennett 90 Gray 90 James 89 Reyes 88 "
            "Cruz 88 Hughes 88 Price 87 Myers 86 Long 86 Foster 86 Sanders 85 Ross 85 "
            "Morales 84 Powell 84 Sullivan 83 Russell 83 Ortiz 83 Jenkins 83 Gutierrez 81 "
            "Perry 80 Butler 80 Barnes 80 Fisher 80 Henderson 80 Coleman 79 Simmons 78 "
            "Patterson 77 Jordan 77 Reynolds 77 Hamilton 76 Graham 76 Kim 75 O'Brien 40 "
            "McDonald 68 Kowalczyk 20 Schneider 40 Fitzgerald 45 Novak 30 Pfeiffer 20")
NICKNAMES = ("William:Bill,Will Robert:Bob,Rob James:Jim,Jimmy Michael:Mike Thomas:Tom "
             "Richard:Rick,Rich Charles:Chuck,Charlie Joseph:Joe Daniel:Dan,Danny David:Dave "
             "Edward:Ed,Ted Kenneth:Ken Steven:Steve Timothy:Tim Anthony:Tony Gregory:Greg "
             "Jeffrey:Jeff Patrick:Pat Elizabeth:Liz,Beth Margaret:Peggy,Maggie Jennifer:Jenny "
             "Katherine:Kathy,Kate Patricia:Patty,Trish Susan:Sue Deborah:Debbie Rebecca:Becky "
             "Kimberly:Kim Pamela:Pam Cynthia:Cindy Christina:Tina Barbara:Barb Judith:Judy")
# Also the same name for labelling (names of the tables above that are each other's forms).
SAME_NAME = ("John:Jack Elizabeth:Betty Sarah:Sara William:Billy Robert:Bobby Michael:Mike "
             "Frederick:Fred Katherine:Kathy,Catherine Theresa:Terry,Teresa Terrence:Terry "
             "Ann:Anne Stephen:Steven Diana:Diane Lorraine:Lori Francis:Frank Lawrence:Larry "
             "Christine:Tina,Chris Christina:Chris Christopher:Chris Deborah:Debra,Debbie")
CITIES = ("Columbus OH 43201-43235 30|Dublin OH 43016-43017 4|Westerville OH 43081-43082 4|"
          "Grove City OH 43123 3|Hilliard OH 43026 3|Delaware OH 43015 3|Newark OH 43055 3|"
          "Lancaster OH 43130 2|Dayton OH 45402-45440 10|Cincinnati OH 45202-45248 12|"
          "Cleveland OH 44101-44135 12|Toledo OH 43604-43623 6|Akron OH 44301-44333 5|"
          "Kettering OH 45429 2|Powell OH 43065 2|Gahanna OH 43230 2|Reynoldsburg OH 43068 2|"
          "Worthington OH 43085 2|Mansfield OH 44903-44907 2|Canton OH 44702-44721 3")
STREETS = _words("Oak Maple Cedar Elm Pine Walnut Willow Birch Hickory Chestnut Sycamore Poplar "
           "Juniper Magnolia Laurel Aspen Spruce Dogwood Redbud Hawthorn Lakeview Hillcrest "
           "Ridgeway Meadowlark Fieldstone Stonegate Brookhaven Kingsley Wexford Ashford "
           "Coventry Dorset Kilbourne Larkspur Foxglove Bramble Sagebrush Cobblestone "
           "Briarwood Fairview Highland Sunset Riverside Park Washington Lincoln Jefferson "
           "Franklin Madison Church Mill Spring Center High Broad Main")
SUFFIXES = [("Street", "St"), ("Avenue", "Ave"), ("Road", "Rd"), ("Drive", "Dr"),
            ("Court", "Ct"), ("Lane", "Ln"), ("Place", "Pl"), ("Boulevard", "Blvd"),
            ("Parkway", "Pkwy"), ("Way", "Way")]
AREA = _words("614 740 380 220 937 513 216 330 419 440 234 567 326")
DOMAINS = ["gmail.com", "yahoo.com", "outlook.com", "example.net", "example.com"]
DOMAIN_W = [40, 15, 10, 20, 15]
SYLLABLES = _words("kal ver mor den bar ton lin ster wick holt rau berg gan fel dor nes")
PLACE = ("street", "city", "region", "postal_code", "country")
LEAD = ("first_name", "last_name", "email", "phone", *PLACE)
